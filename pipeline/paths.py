"""Where each file of a run lives: runs/<run>/<stage>/<name>, the names as pipeline/stage_table.py declares
them, for every artifact a stage makes or another stage reads. A stage's own scratch files stay its own
business."""

from __future__ import annotations

from pathlib import Path

from pipeline import stage_table
from pipeline.config import PipelineConfig
from pipeline.stage_table import engine_source as engine_source  # declared with the stages' inputs
from pipeline.stage_table import export_source as export_source
from pipeline.stage_table import output


def stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    """runs/<run>/<stage>/: everything one stage writes (and its stage.json)."""
    return cfg.run_dir / stage


def metrics_file(cfg: PipelineConfig, stage: str) -> Path:
    """A stage's metrics.json (AP and latency of what it made)."""
    return output(cfg, stage, "metrics")


def trained_checkpoint(cfg: PipelineConfig, role: str) -> Path:
    """The teacher's or the student-alone's weights: the configured file, else what its stage trained."""
    return stage_table.role_checkpoint(cfg, role)


def teacher_checkpoint(cfg: PipelineConfig, override: str | None = None) -> Path:
    """The teacher a student is distilled from: an explicit file, teacher.checkpoint, or the teacher stage's."""
    return Path(override) if override else trained_checkpoint(cfg, "teacher")


def distilled_checkpoint(cfg: PipelineConfig) -> Path:
    return output(cfg, "distill", "checkpoint")




def onnx_model(cfg: PipelineConfig) -> Path:
    """The exported FP32 ONNX (the export contract's file)."""
    return output(cfg, "export", "onnx")


def graph_nms_onnx(cfg: PipelineConfig) -> Path:
    """The exported FP32 ONNX with NMS in the graph (export.nms: graph)."""
    return output(cfg, "export", "onnx_nms")


def onnxruntime_int8(cfg: PipelineConfig, cpu: bool = False) -> Path:
    """The quantize stage's QDQ ONNX for ONNX Runtime (cpu: always uint8 activations, its fastest x86 path)."""
    return output(cfg, "quantize", "onnxruntime_int8_cpu" if cpu else "onnxruntime_int8")


def tensorrt_int8_onnx(cfg: PipelineConfig) -> Path:
    """The quantize stage's QDQ ONNX in the form TensorRT builds INT8 engines from (deploy/qdq_check.py)."""
    return output(cfg, "quantize", "tensorrt_onnx")


def openvino_dir(cfg: PipelineConfig) -> Path:
    return output(cfg, "quantize", "openvino")


def openvino_ir(cfg: PipelineConfig, precision: str) -> Path:
    """An OpenVINO IR of the quantize stage (fp32, fp16 or int8); its .bin lies beside it."""
    return openvino_dir(cfg) / f"model_{precision}.xml"


def engines_dir(cfg: PipelineConfig) -> Path:
    return stage_dir(cfg, "engines")


def benchmark_json(cfg: PipelineConfig) -> Path:
    return output(cfg, "benchmark", "benchmark")


def data_stats(cfg: PipelineConfig) -> Path:
    """The data stage's counts (images, boxes per split and class)."""
    return output(cfg, "data", "stats")


def qat_onnx(cfg: PipelineConfig) -> Path:
    """The qat stage's Q/DQ ONNX (symmetric int8, the form TensorRT builds explicit INT8 engines from)."""
    return output(cfg, "qat", "onnx")


def qat_openvino(cfg: PipelineConfig) -> Path:
    """The qat stage's Q/DQ ONNX read by OpenVINO into an INT8 IR."""
    return output(cfg, "qat", "openvino")
