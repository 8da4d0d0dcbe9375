"""The pipeline's gates, checked from the files a stage wrote, so they hold for a stage that ran just now
and for one skipped as up to date (a gate tightened since still stops the run).

    distill   the distilled student reaches the student-alone baseline's AP + distill.min_gain_over_baseline
              (when the student stage is part of the run)
    export    ONNX Runtime vs PyTorch parity within export.score_atol / export.box_atol
    quantize  every INT8 artifact within quantize.max_map_drop AP of FP32
    qat       both QAT artifacts (ONNX Runtime, OpenVINO) within qat.max_map_drop AP of FP32, every
              convolution quantized (the stage refuses a file with a float convolution)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy import metrics_file
from deploy.errors import GateError, InputError
from pipeline import paths
from pipeline.artifacts import stage_metrics
from pipeline.config import PipelineConfig
from pipeline.stage_table import call, get


def _read_key(path: Path, key: str, *within: str) -> Any:
    """metrics.json's `key` (inside `within`, a path of keys); one line naming the file when it is missing,
    unreadable or lacks the key (a stage folder edited or cut by hand), rather than a KeyError."""
    metrics = value = metrics_file.read(path)
    keys = (*within, key)
    for depth, k in enumerate(keys):
        if not isinstance(value, dict) or k not in value:
            what = f"has no {'.'.join(keys[:depth + 1])!r}" if metrics else "missing or unreadable"
            raise InputError(f"{path}: {what}; its gate cannot be checked (rerun the {path.parent.name} stage)")
        value = value[k]
    return value


def check_gate(stage: str, cfg: PipelineConfig) -> str | None:
    """The stage's gate (pipeline/stage_table.py): None for a stage without one."""
    gate = get(stage).gate
    return call(gate, cfg, stage) if gate else None


# Each gate raises GateError (stage, figure, limit) when it fails and returns a one-line summary of what it
# checked, or None when there was nothing to check. pipeline/stage_table.py names each stage's gate.

def distill_gate(cfg: PipelineConfig, stage: str = "distill") -> str | None:
    limit = cfg.distill.min_gain_over_baseline
    baseline = metrics_file.measurement(stage_metrics(cfg, "student"))
    if limit is None or "student" not in cfg.stages or "AP" not in baseline:
        return None
    ap = 100 * _read_key(paths.metrics_file(cfg, "distill"), "AP", "artifacts", metrics_file.CHECKPOINT)
    base = 100 * baseline["AP"]
    if ap < base + limit:
        raise GateError(f"stage distill: AP {ap:.2f} is below the student-alone baseline's {base:.2f} + {limit} "
                        f"(distill.min_gain_over_baseline); artifacts left in {paths.stage_dir(cfg, 'distill')}")
    return f"AP {ap:.2f} >= baseline {base:.2f} + {limit}"


def export_gate(cfg: PipelineConfig, stage: str = "export") -> str:
    parity = _read_key(paths.metrics_file(cfg, "export"), "parity")
    from export.onnx import check_parity  # torch: only when the export gate is checked

    check_parity(parity, cfg.export.score_atol, cfg.export.box_atol, f"stage export ({paths.onnx_model(cfg)})")
    return (f"parity scores {parity['scores_max_abs']:.1e} <= {cfg.export.score_atol:.0e}, "
            f"boxes {parity['boxes_max_abs']:.1e} <= {cfg.export.box_atol:.0e} px")


def int8_gate(cfg: PipelineConfig, stage: str) -> str | None:
    """Every INT8 artifact of the quantize or qat stage within <stage>.max_map_drop AP of FP32."""
    path = paths.metrics_file(cfg, stage)
    fp32, artifacts = 100 * _read_key(path, "AP", "reference", "onnxruntime_fp32"), _read_key(path, "artifacts")
    if not artifacts:  # a stage that built nothing has nothing to hold to its limit: a cut file, not a pass
        raise InputError(f"{path}: lists no artifact; its gate cannot be checked (rerun the {stage} stage)")
    drops = {n: fp32 - 100 * m["AP"] for n, m in artifacts.items() if m["precision"] == "int8"}
    limit = getattr(cfg, stage).max_map_drop
    for name, drop in drops.items():
        if drop > limit:
            raise GateError(f"stage {stage}: {name} loses {drop:.2f} AP against FP32 > max {limit} "
                            f"({stage}.max_map_drop); artifacts left in {paths.stage_dir(cfg, stage)}")
    return ", ".join(f"{n} {-d:+.2f} AP" for n, d in drops.items()) + f" (max drop {limit})" if drops else None
