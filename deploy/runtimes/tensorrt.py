"""TensorRT runner with pycuda: page-locked host buffers, async copies on one stream, the name-based
tensor API with execute_async_v3 on TensorRT >= 8.5 (bindings and execute_async_v2 before), CUDA
events for GPU time, and optional CUDA graph capture (through cuda-python, which pycuda lacks)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import InputError


def parse_version(version: str) -> tuple[int, int]:
    """'8.6.1.post1' -> (8, 6)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise InputError(f"cannot read a TensorRT version from '{version}'")
    return int(match.group(1)), int(match.group(2))


def engine_meta_path(engine: str | Path) -> Path:
    """The JSON written beside an engine by export/tensorrt.py."""
    return Path(str(engine) + ".json")


def check_engine_meta(meta: dict[str, Any], engine: str, trt_version: str, gpu: str) -> None:
    """An engine only runs where it was built: same TensorRT and same GPU, else rebuild it here."""
    built, running = meta.get("tensorrt"), trt_version
    if built and built.split(".")[:3] != running.split(".")[:3]:  # engines are tied to the exact release
        raise InputError(f"{engine} was built with TensorRT {built}, this device runs {running}: "
                         "rebuild it on this device (make export-trt)")
    if meta.get("gpu") and meta["gpu"] != gpu:
        raise InputError(f"{engine} was built on {meta['gpu']}, this device is {gpu}: rebuild it on this device "
                         "(make export-trt)")


class TensorRTRunner:
    backend = "tensorrt"

    def __init__(self, path: str, cuda_graph: bool = False, device: str | None = None, threads: int | None = None):
        try:
            import pycuda.autoinit  # noqa: F401  (one CUDA context for the process)
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise InputError(f"{path}: running a TensorRT engine needs tensorrt and pycuda ({e})") from None
        self.cuda, self.trt = cuda, trt
        meta_path = engine_meta_path(path)
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        check_engine_meta(self.meta, path, trt.__version__, cuda.Device(0).name())
        logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise InputError(f"{path}: TensorRT cannot deserialize it (built by another version or corrupt); rebuild it")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.path, self.precision = str(path), self.meta.get("precision", "unknown")
        # TensorRT chooses each layer's precision among those the build allowed; without an engine built
        # at DETAILED profiling verbosity that choice is not readable here, so what ran is what was allowed.
        self.executed_precision = self.precision
        self.execution = {"gpu": self.meta.get("gpu"), "dla_core": self.meta.get("dla_core"), "allowed": self.precision}
        self.threads = None
        self.precision_warning = None
        self.named = parse_version(trt.__version__) >= (8, 5)
        self.inputs, self.outputs = {}, {}
        self.dtypes: dict[str, Any] = {}
        for name, is_input, shape, dtype in self._io():
            (self.inputs if is_input else self.outputs)[name] = shape
            self.dtypes[name] = dtype
        self.input_name = next(iter(self.inputs))
        batch = self.inputs[self.input_name][0]
        self.batch = batch if batch > 0 else None
        self.buffers: dict[str, tuple] = {}
        self.shape_key: tuple | None = None
        self.use_graph, self.graph_exec = cuda_graph, None
        self.gpu_ms: float | None = None

    def _io(self):
        """(name, is_input, shape with -1 for dynamic axes, numpy dtype) of every I/O tensor."""
        trt, engine = self.trt, self.engine
        if self.named:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                yield (name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, list(engine.get_tensor_shape(name)),
                       trt.nptype(engine.get_tensor_dtype(name)))
        else:  # TensorRT < 8.5: bindings
            for i in range(engine.num_bindings):
                yield (engine.get_binding_name(i), engine.binding_is_input(i), list(engine.get_binding_shape(i)),
                       trt.nptype(engine.get_binding_dtype(i)))

    def _allocate(self, shape: tuple) -> None:
        """Page-locked host and device buffers for an input shape (reallocated when it changes)."""
        cuda = self.cuda
        if self.named:
            self.context.set_input_shape(self.input_name, shape)
        else:
            self.context.set_binding_shape(0, shape)
        self.buffers = {}
        for name in (*self.inputs, *self.outputs):
            if self.named:
                tensor_shape = tuple(self.context.get_tensor_shape(name))
            else:
                tensor_shape = tuple(self.context.get_binding_shape(self.engine.get_binding_index(name)))
            host = cuda.pagelocked_empty(tensor_shape, self.dtypes[name])
            device = cuda.mem_alloc(host.nbytes)
            self.buffers[name] = (host, device)
            if self.named:
                self.context.set_tensor_address(name, int(device))
        self.shape_key, self.graph_exec = shape, None

    def _enqueue(self) -> None:
        if self.named:
            self.context.execute_async_v3(self.stream.handle)
        else:
            bindings = [int(self.buffers[self.engine.get_binding_name(i)][1]) for i in range(self.engine.num_bindings)]
            self.context.execute_async_v2(bindings, self.stream.handle)

    def _capture(self) -> None:
        """Record one inference into a CUDA graph and instantiate it."""
        try:
            from cuda.bindings import runtime as cudart  # cuda-python 12.6+
        except ImportError:
            try:
                from cuda import cudart  # older cuda-python
            except ImportError:
                raise InputError("cuda_graph needs the cuda-python package (pip install cuda-python)") from None
        self._enqueue()  # TensorRT wants one enqueue before capture to settle its own state
        self.stream.synchronize()
        handle = self.stream.handle
        cudart.cudaStreamBeginCapture(handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
        self._enqueue()
        err, graph = cudart.cudaStreamEndCapture(handle)
        if int(err) != 0:
            raise InputError(f"{self.path}: CUDA graph capture failed ({err}); run without cuda_graph")
        err, self.graph_exec = cudart.cudaGraphInstantiate(graph, 0)
        self._cudart = cudart

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [N, 3, H, W] -> {output name: array}; GPU time of the call in self.gpu_ms."""
        cuda = self.cuda
        shape = tuple(images.shape)
        if shape != self.shape_key:
            self._allocate(shape)
            if self.use_graph:
                self._capture()
        host_in, device_in = self.buffers[self.input_name]
        np.copyto(host_in, images)
        start, end = cuda.Event(), cuda.Event()
        cuda.memcpy_htod_async(device_in, host_in, self.stream)
        start.record(self.stream)
        if self.graph_exec is not None:
            self._cudart.cudaGraphLaunch(self.graph_exec, self.stream.handle)
        else:
            self._enqueue()
        end.record(self.stream)
        for name in self.outputs:
            host, device = self.buffers[name]
            cuda.memcpy_dtoh_async(host, device, self.stream)
        self.stream.synchronize()
        self.gpu_ms = start.time_till(end)
        return {name: np.array(self.buffers[name][0]) for name in self.outputs}


def available() -> str | None:
    """None when TensorRT, pycuda and a GPU are here, else the reason they are not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (JetPack ships it; elsewhere pip install -e .[tensorrt])"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA GPU"
    except Exception as e:  # ImportError, or the driver refusing
        return f"pycuda / CUDA unavailable ({type(e).__name__}: {str(e)[:80]})"
    return None
