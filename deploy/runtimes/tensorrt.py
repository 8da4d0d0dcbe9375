"""TensorRT runner with pycuda: page-locked host buffers, async copies on one stream, the name-based
tensor API with execute_async_v3 (TensorRT 8.5 to 10.x), CUDA events for GPU time, and optional CUDA
graph capture (through cuda-python, which pycuda lacks). Every TensorRT call that reports failure by
its return value, and every cuda-python call, is checked: a failed launch raises DeviceError rather
than returning the previous call's outputs from the reused buffers (as trtexec checks each call)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import DeviceError, InputError

SUPPORTED = ((8, 5), (11, 0))  # [8.5, 11.0): 11 removed the FP16/INT8 builder flags and the calibrators
# An engine built with EfficientNMS_TRT (deploy/build_engine.py --nms): fixed K slots, the first n used. Here,
# not in deploy/predict.py, so that building an engine imports neither Pillow nor pycocotools.
ENGINE_NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def parse_version(version: str) -> tuple[int, int]:
    """'8.6.1.post1' -> (8, 6)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise InputError(f"cannot read a TensorRT version from '{version}'")
    return int(match.group(1)), int(match.group(2))


def check_version(version: str) -> tuple[int, int]:
    """(major, minor) of a supported TensorRT, else an InputError that names it and says which are."""
    major, minor = parse_version(version)
    if not SUPPORTED[0] <= (major, minor) < SUPPORTED[1]:
        raise InputError(f"TensorRT {version} is not supported: edgekd builds and runs engines with TensorRT 8.5 to "
                         "10.x (JetPack 5.1+, or pip install 'tensorrt>=8.5,<11')")
    return major, minor


def import_tensorrt(what: str) -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver) with a CUDA context made, and a supported TensorRT; else one InputError
    saying what is missing. pycuda.autoinit raises pycuda's own error (not ImportError) where there is
    no GPU or driver, so anything it raises counts as missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise InputError(f"{what} needs the tensorrt package ({e}); JetPack installs it system-wide (make the venv "
                         "with --system-site-packages), elsewhere pip install -e .[tensorrt]") from e
    try:
        import pycuda.autoinit  # noqa: F401  (one CUDA context for the process)
        import pycuda.driver as cuda
    except ImportError as e:
        raise InputError(f"{what} needs pycuda ({e}): pip install pycuda (on a Jetson with /usr/local/cuda/bin on "
                         "PATH: it builds against JetPack's CUDA)") from e
    except Exception as e:  # noqa: BLE001  pycuda._driver.Error: no GPU, no driver, cuInit failed
        raise InputError(f"{what}: pycuda cannot open a CUDA device ({type(e).__name__}: {str(e)[:120]})") from e
    check_version(trt.__version__)
    return trt, cuda


def engine_meta_path(engine: str | Path) -> Path:
    """The JSON written beside an engine by deploy/build_engine.py."""
    return Path(str(engine) + ".json")


def check_engine_meta(meta: dict[str, Any], engine: str, trt_version: str, gpu: str) -> None:
    """An engine only runs where it was built: same TensorRT and same GPU, else rebuild it here."""
    built, running = meta.get("tensorrt"), trt_version
    if built and built.split(".")[:3] != running.split(".")[:3]:  # engines are tied to the exact release
        raise InputError(f"{engine} was built with TensorRT {built}, this device runs {running}: "
                         "rebuild it on this device (deploy/build_engine.py or make export-trt)")
    if meta.get("gpu") and meta["gpu"] != gpu:
        raise InputError(f"{engine} was built on {meta['gpu']}, this device is {gpu}: rebuild it on this device "
                         "(deploy/build_engine.py or make export-trt)")


def cuda_call(result: Any, call: str, where: str) -> Any:
    """A cuda-python call's result (err, *values) checked: the values, or DeviceError naming the call."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeviceError(f"{where}: {call} failed ({err})")
    return values[0] if len(values) == 1 else tuple(values)


def import_cudart(driver_version: int | None = None) -> Any:
    """cuda-python's runtime module (cuda.bindings.runtime from 12.6, cuda.cudart before), refused with the
    pin to install when its CUDA major is newer than the driver's (an unpinned install on JetPack 6
    takes 13.x, built for CUDA 13)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise InputError("cuda_graph needs cuda-python: pip install 'cuda-python>=11.8,<12' on JetPack 5 "
                             "(CUDA 11.4), 'cuda-python>=12.6,<13' on JetPack 6 (CUDA 12.6)") from exc
    runtime = cuda_call(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion", "cuda-python")
    driver = driver_version or cuda_call(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion", "cuda-python")
    if runtime // 1000 > driver // 1000:
        raise InputError(f"cuda-python targets CUDA {runtime // 1000}.{runtime % 1000 // 10}, this device's driver "
                         f"CUDA {driver // 1000}.{driver % 1000 // 10}: pip install 'cuda-python>={driver // 1000},"
                         f"<{driver // 1000 + 1}'")
    return cudart


class TensorRTRunner:
    backend = "tensorrt"

    def __init__(self, path: str, cuda_graph: bool = False, device: str | None = None, threads: int | None = None):
        trt, cuda = import_tensorrt(f"{path}: running a TensorRT engine")
        self.cuda, self.trt = cuda, trt
        meta_path = engine_meta_path(path)
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        check_engine_meta(self.meta, path, trt.__version__, cuda.Device(0).name())
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        # must be set before deserializing a DLA engine (IRuntime::setDLACore)
        if self.meta.get("dla_core") is not None:
            runtime.DLA_core = int(self.meta["dla_core"])
        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise InputError(f"{path}: TensorRT cannot deserialize it (built "
                             "by another version or corrupt); rebuild it")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.path, self.precision = str(path), self.meta.get("precision", "unknown")
        # TensorRT chooses each layer's precision among those the build allowed; without an engine built
        # at DETAILED profiling verbosity that choice is not readable here, so what ran is what was allowed.
        self.executed_precision = self.precision
        self.execution = {"gpu": self.meta.get("gpu"), "dla_core": self.meta.get("dla_core"), "allowed": self.precision}
        self.threads = None
        self.precision_warning = None
        self.inputs, self.outputs = {}, {}
        self.dtypes: dict[str, Any] = {}
        for name, is_input, shape, dtype in self._io():
            (self.inputs if is_input else self.outputs)[name] = shape
            self.dtypes[name] = dtype
        self.input_name = next(iter(self.inputs))
        self.input_uint8 = np.dtype(self.dtypes[self.input_name]) == np.uint8
        batch = self.inputs[self.input_name][0]
        self.batch = batch if batch > 0 else None
        self.buffers: dict[str, tuple] = {}
        self.shape_key: tuple | None = None
        self.use_graph, self.graph_exec = cuda_graph, None
        self.gpu_ms: float | None = None

    def _io(self):
        """(name, is_input, shape with -1 for dynamic axes, numpy dtype) of every I/O tensor."""
        trt, engine = self.trt, self.engine
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            yield (name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, list(engine.get_tensor_shape(name)),
                   trt.nptype(engine.get_tensor_dtype(name)))

    def _allocate(self, shape: tuple) -> None:
        """Page-locked host and device buffers for an input shape (reallocated when it changes)."""
        cuda = self.cuda
        if not self.context.set_input_shape(self.input_name, shape):
            raise InputError(f"{self.path}: the engine takes no input of shape {list(shape)} (built for "
                             f"{self.inputs[self.input_name]}, batch up to {self.meta.get('max_batch', 1)})")
        self.buffers = {}
        for name in (*self.inputs, *self.outputs):
            host = cuda.pagelocked_empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self.buffers[name] = (host, device)
            if not self.context.set_tensor_address(name, int(device)):
                raise DeviceError(f"{self.path}: set_tensor_address('{name}') failed")
        self.shape_key, self.graph_exec = shape, None

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise DeviceError(f"{self.path}: execute_async_v3 failed (see TensorRT's log above)")

    def _capture(self) -> None:
        """Record one inference into a CUDA graph and instantiate it; a failed capture is ended before
        the error, so the stream stays usable (as trtexec does)."""
        cudart = import_cudart()
        where = f"{self.path}: CUDA graph"
        self._enqueue()  # TensorRT wants one enqueue before capture to settle its own state
        self.stream.synchronize()
        handle = self.stream.handle
        cuda_call(cudart.cudaStreamBeginCapture(handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                  "cudaStreamBeginCapture", where)
        try:
            self._enqueue()
        finally:
            graph = cuda_call(cudart.cudaStreamEndCapture(handle), "cudaStreamEndCapture", where)
        # cudaGraphInstantiateWithFlags has the same (graph, flags) signature in cuda-python 11.8, 12 and
        # 13; cudaGraphInstantiate's changed in 12 (11.8 takes a log buffer and its size).
        self.graph_exec = cuda_call(cudart.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags",
                                    where)
        cuda_call(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy", where)
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
            cuda_call(self._cudart.cudaGraphLaunch(self.graph_exec, self.stream.handle), "cudaGraphLaunch", self.path)
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
    """None when a supported TensorRT, pycuda and a GPU are here, else the reason they are not."""
    try:
        import tensorrt
    except ImportError:
        return "tensorrt is not installed (JetPack ships it; elsewhere pip install -e .[tensorrt])"
    try:
        check_version(tensorrt.__version__)
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA GPU"
    except InputError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001  ImportError, or pycuda's own error when the driver refuses
        return f"pycuda / CUDA unavailable ({type(e).__name__}: {str(e)[:80]})"
    return None
