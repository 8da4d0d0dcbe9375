"""The settings of export and quantization (the `export` and `quantize` sections of a pipeline config):
plain dataclasses, importable without torch or the runtimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ExportConfig:
    checkpoint: str | None = None  # the model to export; default <run>/distill/last.pt
    opset: int = 17
    batch: int = 1  # the static batch size (the device's)
    dynamic_batch: bool = False  # a symbolic batch axis instead
    slim: bool = True  # onnxslim after the checker
    score_atol: float = 1e-4  # gate: max |scores ONNX Runtime - PyTorch|
    box_atol: float = 1e-2  # gate: max |boxes ONNX Runtime - PyTorch| in input pixels
    parity_images: int = 16  # val images the parity check runs on
    warmup: int = 10  # latency: untimed calls, then timed ones
    iters: int = 100
    threads: int = 0  # runtime threads; 0 = the runtime's default (all cores)
    # Also write model.uint8.onnx: input the letterboxed uint8 image [N, H, W, 3] as a camera or decoder
    # gives it; the cast, mean/std and layout run inside the graph, so the host only letterboxes.
    uint8_input: bool = False
    # Also write model.nms.onnx (batch 1): the detections after NMS as its outputs det_boxes [K, 4] xyxy
    # input pixels, det_scores [K], det_labels [K], with host NMS's thresholds (deploy/postprocess.py)
    # in the graph as ONNX NonMaxSuppression, which ONNX Runtime, OpenVINO and TensorRT run.
    nms: Literal["host", "graph"] = "host"


ARTIFACTS = ("onnxruntime_int8", "onnxruntime_int8_trt", "openvino_fp32", "openvino_bf16", "openvino_fp16",
             "openvino_int8")


@dataclass
class QuantizeConfig:
    # which to build and measure; onnxruntime_int8_cpu (uint8 activations, ONNX Runtime's fast x86 path,
    # not for TensorRT) is extra
    # openvino_bf16 (the FP32 IR compiled for bf16 arithmetic) is built where the CPU reports BF16, and
    # listed as skipped, with the reason, elsewhere.
    # onnxruntime_int8_trt is the file TensorRT builds INT8 engines from (make export-trt PRECISION=int8),
    # measured here in ONNX Runtime.
    artifacts: list[Literal["onnxruntime_int8", "onnxruntime_int8_cpu", "onnxruntime_int8_trt", "openvino_fp32",
                            "openvino_bf16", "openvino_fp16", "openvino_int8"]] = field(
        default_factory=lambda: list(ARTIFACTS))
    # Per OpenVINO artifact, the inference precision to compile with (f32 | bf16 | f16), overriding
    # OPENVINO_INFERENCE: e.g. {openvino_fp16: f16} for f16 arithmetic on a CPU that has it.
    inference_precision: dict[str, str] = field(default_factory=dict)
    calib_images: int = 300  # drawn from the train split, never val
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"  # ONNX Runtime's calibrator
    seed: int = 0  # which training images calibrate
    # ORT QDQ activations: false = uint8 asymmetric (ORT's x86 fast path; after ReLU6 it keeps the bit
    # a symmetric int8 wastes on the sign: -0.6 AP on the default student where symmetric lost -3.5);
    # true = int8 with zero point 0 (TensorRT builds from onnxruntime_int8_trt, which is always symmetric).
    symmetric_activations: bool = False
    max_map_drop: float = 1.0  # gate: INT8 AP may fall at most this far (AP points) below FP32
    accuracy_aware: bool = True  # over the gate: keep the most sensitive layers in float until it holds
    max_float_layers: int = 32  # accuracy-aware search gives up beyond this many float layers
    openvino_hint: Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"] = "LATENCY"
    openvino_cache_dir: str | None = None  # compiled-model cache (faster start-up; latency unchanged)
