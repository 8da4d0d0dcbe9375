"""Every deployable artifact of a run under its stage-qualified name (`quantize/openvino_int8`,
`qat/openvino_int8`, `export/onnxruntime_fp32_nms`): read from the stages' metrics.json, so that the
benchmark table, benchmark.json and the report name one file alike and two stages' files never share a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy import metrics_file
from deploy.errors import InputError
from pipeline import paths
from pipeline.config import PipelineConfig

QAT_NAMES = {"qat_onnxruntime": "onnxruntime_int8_qdq", "qat_openvino": "openvino_int8"}


@dataclass(frozen=True)
class Artifact:
    name: str  # stage-qualified
    stage: str
    key: str  # the name in its stage's metrics.json
    path: Path
    inference_precision: str | None = None  # an OpenVINO IR compiled for another precision (the FP32 IR @bf16)


def qualified_name(stage: str, key: str) -> str:
    """`stage/key`; the qat stage's keys lose their `qat_` prefix, which the stage already says."""
    return f"{stage}/{QAT_NAMES.get(key, key)}" if stage == "qat" else f"{stage}/{key}"


def stage_metrics(cfg: PipelineConfig, stage: str) -> dict:
    """The stage's metrics.json in deploy/metrics_file.py's layout; {} when missing or unreadable."""
    return metrics_file.read(paths.metrics_file(cfg, stage))


def exported_reference(cfg: PipelineConfig) -> dict:
    """The export stage's metrics.json, holding the PyTorch and ONNX Runtime FP32 measurements the INT8
    stages are held against; one line naming the file when it lacks them."""
    path = paths.metrics_file(cfg, "export")
    exported = stage_metrics(cfg, "export")
    if any("AP" not in metrics_file.measurement(exported, n) for n in ("onnxruntime_fp32", "pytorch")):
        raise InputError(f"{path}: unreadable, or without the PyTorch and ONNX Runtime FP32 measurements: "
                         "rerun `make export`")
    return exported


def _in_this_run(cfg: PipelineConfig, stage: str, recorded: str) -> Path:
    """A file a stage's metrics.json names, inside this run's folder: the metrics keep the path the run had
    when it was written, which a copied or moved run folder no longer has."""
    parts = Path(recorded).parts
    if stage not in parts:
        return Path(recorded)
    last = len(parts) - 1 - parts[::-1].index(stage)
    return paths.stage_dir(cfg, stage).joinpath(*parts[last + 1:])


def run_artifacts(cfg: PipelineConfig) -> list[Artifact]:
    """The run's artifacts that exist on disk: export's ONNX files, quantize's and qat's files (as their
    metrics name them), TensorRT engines, then any other model file those stages left (named by its file)."""
    found: list[Artifact] = []
    for stage in ("export", "quantize", "qat"):
        found += [Artifact(qualified_name(stage, k), stage, k, _in_this_run(cfg, stage, m["artifact"]),
                           m.get("inference_precision"))
                  for k, m in stage_metrics(cfg, stage).get("artifacts", {}).items()]
    found += [Artifact(f"engines/tensorrt_{p.stem.removeprefix('model_')}", "engines",
                       f"tensorrt_{p.stem.removeprefix('model_')}", p)
              for p in sorted(paths.engines_dir(cfg).glob("*.engine"))]
    listed = {a.path.resolve() for a in found}
    for stage, pattern in (("export", "*.onnx"), ("quantize", "*.onnx"), ("quantize", "openvino/*.xml"),
                           ("qat", "*.onnx"), ("qat", "*.xml")):
        for p in sorted(paths.stage_dir(cfg, stage).glob(pattern)):
            if p.resolve() not in listed:  # written, but not in its stage's metrics (an older or partial run)
                found.append(Artifact(f"{stage}/{p.name}", stage, p.name, p))
    return [a for a in found if a.path.is_file()]
