"""ONNX Runtime runner (CPU by default; CUDA or TensorRT execution providers where installed).

What runs is read back after loading: the providers the session holds, and for a Q/DQ graph, the
optimized graph ONNX Runtime actually executes (its QDQ pairs fused into QLinearConv, or left as
DequantizeLinear -> float Conv where no int8 kernel applies).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter

import numpy as np

from deploy.errors import InputError

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
INT8_CONVS = {"QLinearConv", "ConvInteger", "NhwcQLinearConv"}
FLOAT_CONVS = {"Conv", "FusedConv", "NchwcConv"}


def _shape(dims) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


def _options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's optimiser notes are not the user's concern
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def convolution_kinds(ops: list[str]) -> dict[str, int]:
    """{'int8': n, 'fp32': m}: the convolutions of a graph by the arithmetic their op type runs."""
    counts = Counter("int8" if op in INT8_CONVS else "fp32" for op in ops if op in INT8_CONVS | FLOAT_CONVS)
    return {k: counts[k] for k in ("int8", "fp32") if counts[k]}


class OrtRunner:
    backend = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        if device not in PROVIDERS:
            raise InputError(f"onnxruntime device '{device}': valid devices are {', '.join(PROVIDERS)}")
        try:
            stored_ops = [n.op_type for n in _graph_nodes(str(path))]
        except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
            raise InputError(f"{path}: ONNX Runtime cannot load it (not an ONNX model: "
                             f"{str(e).splitlines()[0][:160]})") from e
        qdq = "QuantizeLinear" in stored_ops or "QLinearConv" in stored_ops
        options = _options(threads)
        with tempfile.TemporaryDirectory() as work:
            if qdq:  # the graph ORT runs after fusing, to tell int8 kernels from dequantized float ones
                options.optimized_model_filepath = os.path.join(work, "optimized.onnx")
            try:
                self.session = ort.InferenceSession(str(path), options, providers=PROVIDERS[device])
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types
                raise InputError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from e
            run_ops = [n.op_type for n in _graph_nodes(options.optimized_model_filepath)] if qdq else stored_ops
        self.path, self.device = str(path), device
        self.inputs = {i.name: _shape(i.shape) for i in self.session.get_inputs()}
        self.outputs = {o.name: _shape(o.shape) for o in self.session.get_outputs()}
        self.input_name = next(iter(self.inputs))
        self.input_uint8 = self.session.get_inputs()[0].type == "tensor(uint8)"  # [N, H, W, 3] letterboxed image
        batch = self.inputs[self.input_name][0]
        self.batch = batch if batch > 0 else None
        self.precision = "int8" if qdq else "fp32"
        convolutions = convolution_kinds(run_ops)
        self.executed_precision = "+".join(k for k, _ in Counter(convolutions).most_common()) or "fp32"
        session_threads = self.session.get_session_options().intra_op_num_threads
        self.threads = session_threads or os.cpu_count()  # 0: ORT's default, one per core
        self.execution = {"providers": self.session.get_providers(), "qdq": qdq, "convolutions": convolutions,
                          "threads": self.threads, "threads_setting": session_threads or "default"}
        self.precision_warning = None
        if qdq and "int8" not in convolutions:
            self.precision_warning = (f"warning: {path}: a Q/DQ graph, but ONNX Runtime fused no convolution into an "
                                      f"int8 kernel on {self.session.get_providers()[0]}: it runs dequantized fp32")
            print(self.precision_warning, file=sys.stderr, flush=True)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [N, 3, H, W] (uint8 [N, H, W, 3] for a uint8-input model) -> {output name: array}."""
        values = self.session.run(None, {self.input_name: images})
        return dict(zip(self.outputs, values))


def _graph_nodes(path: str):
    import onnx

    return onnx.load(path, load_external_data=False).graph.node
