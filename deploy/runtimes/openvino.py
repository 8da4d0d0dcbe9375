"""OpenVINO runner for IR (.xml + .bin) files; CPU by default, with a performance hint and a model cache."""

from __future__ import annotations

import numpy as np

from deploy.errors import InputError

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def ir_precision(model) -> str:
    """int8 when the IR holds FakeQuantize (NNCF) ops, fp16 when its weights are stored in f16, else fp32."""
    types = {op.get_type_name() for op in model.get_ops()}
    if "FakeQuantize" in types:
        return "int8"
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "f16":
            return "fp16"
    return "fp32"


def _shape(partial) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in partial]


class OpenVinoRunner:
    backend = "openvino"

    def __init__(self, path: str, device: str = "CPU", threads: int | None = None, hint: str = "LATENCY",
                 cache_dir: str | None = None):
        import openvino as ov

        if hint not in HINTS:
            raise InputError(f"openvino hint '{hint}': valid hints are {', '.join(HINTS)}")
        core = ov.Core()
        if cache_dir:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise InputError(f"{path}: OpenVINO cannot read it ({str(e).splitlines()[0][:200]})") from None
        config = {"PERFORMANCE_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        device = device.upper()
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self.path, self.device, self.hint = str(path), device, hint
        self.inputs = {p.get_any_name(): _shape(p.get_partial_shape()) for p in model.inputs}
        self.outputs = {p.get_any_name(): _shape(p.get_partial_shape()) for p in model.outputs}
        self.input_name = next(iter(self.inputs))
        batch = self.inputs[self.input_name][0]
        self.batch = batch if batch > 0 else None
        self.precision = ir_precision(model)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [N, 3, H, W] -> {output name: array} (copies: the request reuses its buffers)."""
        result = self.request.infer({0: images}, share_inputs=True)  # no copy of the input batch
        return {port.get_any_name(): np.array(result[port]) for port in self.compiled.outputs}

    def warmup(self, n: int = 5) -> None:
        shape = [d if d > 0 else 1 for d in self.inputs[self.input_name]]
        dummy = np.zeros(shape, dtype=np.float32)
        for _ in range(n):
            self.infer(dummy)
