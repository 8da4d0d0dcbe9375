"""Where each file of a run lives, spelled once: runs/<run>/<stage>/... for every artifact a stage makes
or another stage reads. A stage's own scratch files stay its own business."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineConfig


def stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    """runs/<run>/<stage>/: everything one stage writes (and its stage.json)."""
    return cfg.run_dir / stage


def metrics_file(cfg: PipelineConfig, stage: str) -> Path:
    """A stage's metrics.json (AP and latency of what it made)."""
    return stage_dir(cfg, stage) / "metrics.json"


def trained_checkpoint(cfg: PipelineConfig, role: str) -> Path:
    """The teacher's or the student-alone's weights: the configured file, else what its stage trained."""
    return Path(getattr(cfg, role).checkpoint or stage_dir(cfg, role) / "last.pt")


def teacher_checkpoint(cfg: PipelineConfig, override: str | None = None) -> Path:
    """The teacher a student is distilled from: an explicit file, teacher.checkpoint, or the teacher stage's."""
    return Path(override) if override else trained_checkpoint(cfg, "teacher")


def distilled_checkpoint(cfg: PipelineConfig) -> Path:
    return stage_dir(cfg, "distill") / "last.pt"


def export_source(cfg: PipelineConfig) -> Path:
    """The checkpoint the export stage converts: export.checkpoint, else the distilled student."""
    return Path(cfg.export.checkpoint or distilled_checkpoint(cfg))


def onnx_model(cfg: PipelineConfig) -> Path:
    """The exported FP32 ONNX (the export contract's file)."""
    return stage_dir(cfg, "export") / "model.onnx"


def graph_nms_onnx(cfg: PipelineConfig) -> Path:
    """The exported FP32 ONNX with NMS in the graph (export.nms: graph)."""
    return stage_dir(cfg, "export") / "model.nms.onnx"


def onnxruntime_int8(cfg: PipelineConfig, cpu: bool = False) -> Path:
    """The quantize stage's QDQ ONNX for ONNX Runtime (cpu: always uint8 activations, its fastest x86 path)."""
    return stage_dir(cfg, "quantize") / ("model.int8.cpu.onnx" if cpu else "model.int8.onnx")


def tensorrt_int8_onnx(cfg: PipelineConfig) -> Path:
    """The quantize stage's QDQ ONNX in the form TensorRT builds INT8 engines from (deploy/qdq_check.py)."""
    return stage_dir(cfg, "quantize") / "model.int8.trt.onnx"


def openvino_dir(cfg: PipelineConfig) -> Path:
    return stage_dir(cfg, "quantize") / "openvino"


def openvino_ir(cfg: PipelineConfig, precision: str) -> Path:
    """An OpenVINO IR of the quantize stage (fp32, fp16 or int8); its .bin lies beside it."""
    return openvino_dir(cfg) / f"model_{precision}.xml"


def engines_dir(cfg: PipelineConfig) -> Path:
    return stage_dir(cfg, "engines")


def benchmark_json(cfg: PipelineConfig) -> Path:
    return stage_dir(cfg, "benchmark") / "benchmark.json"


def data_stats(cfg: PipelineConfig) -> Path:
    """The data stage's counts (images, boxes per split and class)."""
    return stage_dir(cfg, "data") / "stats.json"


def qat_onnx(cfg: PipelineConfig) -> Path:
    """The qat stage's Q/DQ ONNX (symmetric int8, the form TensorRT builds explicit INT8 engines from)."""
    return stage_dir(cfg, "qat") / "model.qat.onnx"


def qat_openvino(cfg: PipelineConfig) -> Path:
    """The qat stage's Q/DQ ONNX read by OpenVINO into an INT8 IR."""
    return stage_dir(cfg, "qat") / "model_int8.xml"
