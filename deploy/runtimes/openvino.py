"""OpenVINO runner for IR (.xml + .bin) files; CPU by default, with a performance hint and a model cache.

Every IR is compiled with an explicit INFERENCE_PRECISION_HINT: left to itself, the CPU plugin runs an
FP32 IR in bf16 on every CPU with native bf16 (Sapphire Rapids and later Xeons), so a table would call
bf16 results FP32. The default follows what the IR is: f32 arithmetic for FP32, FP16 (its f16 weights
are decompressed) and INT8 IRs (the layers NNCF left in float). bf16 or f16 arithmetic is a request,
honoured only where the device reports BF16 / FP16 in OPTIMIZATION_CAPABILITIES.

After compiling, the runner reads back what will run: the compiled model's INFERENCE_PRECISION_HINT and
the runtime precision and kernel of every convolution in the execution graph.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np

from deploy.errors import InputError

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
# INFERENCE_PRECISION_HINT value -> our precision name, and the OPTIMIZATION_CAPABILITIES entry it needs.
INFERENCE_PRECISIONS = {"f32": ("fp32", "FP32"), "bf16": ("bf16", "BF16"), "f16": ("fp16", "FP16")}
# Execution-graph runtime precisions -> our names.
RUNTIME_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}


def ir_precision(model) -> str:
    """int8 when the IR holds FakeQuantize (NNCF) ops, fp16 when its weights are stored in f16, else fp32."""
    types = {op.get_type_name() for op in model.get_ops()}
    if "FakeQuantize" in types:
        return "int8"
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "f16":
            return "fp16"
    return "fp32"


def check_inference_precision(value: str | None, where: str) -> str | None:
    """A requested inference precision, validated (None: the default for the IR)."""
    if value is not None and value not in INFERENCE_PRECISIONS:
        raise InputError(f"{where}: unknown inference precision '{value}'; valid: {', '.join(INFERENCE_PRECISIONS)}")
    return value


def device_capabilities(core, device: str) -> list[str]:
    try:
        return list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # a device that does not report them (some plugins)
        return []


def kernel_precision(kernel: str, runtime_precision: str) -> str:
    """The arithmetic a convolution kernel runs: its name's suffix (brgconv_avx512_1x1_f32 -> f32).
    The execution graph's runtimePrecision follows the weights: an FP16 IR's convolutions report f16
    while their f32 kernels decompress the weights."""
    suffix = kernel.rsplit("_", 1)[-1].lower()
    return suffix if suffix in RUNTIME_NAMES else runtime_precision


def convolution_execution(compiled) -> list[tuple[str, str]]:
    """(precision its kernel runs, kernel) of every convolution in the compiled model's execution graph."""
    out = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            kernel = info["primitiveType"].astype(str)
            out.append((kernel_precision(kernel, info["runtimePrecision"].astype(str)), kernel))
    return out


def summarize_executed(counts: Counter) -> str:
    """One label for what the convolutions ran in: 'int8', 'bf16', or 'int8+fp32' (most frequent first)."""
    return "+".join(name for name, _ in counts.most_common()) or "none"


def expected_executed(stored: str, inference: str) -> set[str]:
    """The precisions the convolutions may run in: the requested arithmetic, plus int8 for an INT8 IR."""
    return {INFERENCE_PRECISIONS[inference][0]} | ({"int8"} if stored == "int8" else set())


def _shape(partial) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in partial]


class OpenVinoRunner:
    backend = "openvino"

    def __init__(self, path: str, device: str = "CPU", threads: int | None = None, hint: str = "LATENCY",
                 cache_dir: str | None = None, inference_precision: str | None = None):
        import openvino as ov

        if hint not in HINTS:
            raise InputError(f"openvino hint '{hint}': valid hints are {', '.join(HINTS)}")
        check_inference_precision(inference_precision, str(path))
        core = ov.Core()
        if cache_dir:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise InputError(f"{path}: OpenVINO cannot read it ({str(e).splitlines()[0][:200]})") from e
        device = device.upper()
        stored = ir_precision(model)
        inference = inference_precision or "f32"
        name, capability = INFERENCE_PRECISIONS[inference]
        capabilities = device_capabilities(core, device)
        if inference != "f32" and capability not in capabilities:
            raise InputError(f"{path}: {inference} inference asked, but {device} reports no {capability} in "
                             f"OPTIMIZATION_CAPABILITIES ({', '.join(capabilities) or 'none'})")
        if stored == "fp16" and inference == "bf16":
            raise InputError(f"{path}: the IR stores f16 weights; bf16 inference applies to an FP32 IR")
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": inference}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as e:  # e.g. a capped instruction set that lacks the asked precision's kernels
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise InputError(f"{path}: OpenVINO cannot compile it for {device} with {inference} inference "
                             f"({(lines or ['no message'])[-1][:200]})") from e
        self.request = self.compiled.create_infer_request()
        self.path, self.device, self.hint = str(path), device, hint
        self.inputs = {p.get_any_name(): _shape(p.get_partial_shape()) for p in model.inputs}
        self.outputs = {p.get_any_name(): _shape(p.get_partial_shape()) for p in model.outputs}
        self.input_name = next(iter(self.inputs))
        self.input_uint8 = model.inputs[0].get_element_type() == ov.Type.u8  # [N, H, W, 3] letterboxed image
        batch = self.inputs[self.input_name][0]
        self.batch = batch if batch > 0 else None
        self.stored_precision = stored
        self.inference_precision = inference
        # The artifact's name for what it is: an FP32 IR asked to run in bf16 is the bf16 artifact.
        self.precision = stored if inference == "f32" else (name if stored == "fp32" else f"{stored}+{name}")
        convolutions = convolution_execution(self.compiled)
        counts = Counter(RUNTIME_NAMES.get(p, p) for p, _ in convolutions)
        self.executed_precision = summarize_executed(counts)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.execution = {
            "inference_precision_hint": str(self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()),
            "convolutions": dict(counts),
            "kernels": dict(Counter(k for _, k in convolutions).most_common()),
            "threads": self.threads, "streams": int(self.compiled.get_property("NUM_STREAMS")),
            "capabilities": capabilities,
        }
        ran = set(self.execution["convolutions"])
        allowed = expected_executed(stored, inference)
        self.precision_warning = None
        if (ran and not ran <= allowed) or (stored == "int8" and "int8" not in ran):
            self.precision_warning = (f"warning: {path}: asked for {' / '.join(sorted(allowed))} convolutions, "
                                      f"OpenVINO runs {self.executed_precision} ({self.execution['convolutions']})")
            print(self.precision_warning, file=sys.stderr, flush=True)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [N, 3, H, W] -> {output name: array} (copies: the request reuses its buffers)."""
        result = self.request.infer({0: images}, share_inputs=True)  # no copy of the input batch
        return {port.get_any_name(): np.array(result[port]) for port in self.compiled.outputs}
