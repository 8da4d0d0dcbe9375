"""ONNX Runtime runner (CPU by default; CUDA or TensorRT execution providers where installed)."""

from __future__ import annotations

import numpy as np

from deploy.errors import InputError

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _shape(dims) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


class OrtRunner:
    backend = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        if device not in PROVIDERS:
            raise InputError(f"onnxruntime device '{device}': valid devices are {', '.join(PROVIDERS)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's optimiser notes are not the user's concern
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=PROVIDERS[device])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise InputError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.path, self.device = str(path), device
        self.inputs = {i.name: _shape(i.shape) for i in self.session.get_inputs()}
        self.outputs = {o.name: _shape(o.shape) for o in self.session.get_outputs()}
        self.input_name = next(iter(self.inputs))
        batch = self.inputs[self.input_name][0]
        self.batch = batch if batch > 0 else None
        ops = {n.op_type for n in _graph_nodes(self.path)}
        self.precision = "int8" if "QuantizeLinear" in ops or "QLinearConv" in ops else "fp32"

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [N, 3, H, W] -> {output name: array}."""
        values = self.session.run(None, {self.input_name: images})
        return dict(zip(self.outputs, values))

    def warmup(self, n: int = 5) -> None:
        shape = [d if d > 0 else 1 for d in self.inputs[self.input_name]]
        dummy = np.zeros(shape, dtype=np.float32)
        for _ in range(n):
            self.infer(dummy)


def _graph_nodes(path: str):
    import onnx

    return onnx.load(path, load_external_data=False).graph.node
