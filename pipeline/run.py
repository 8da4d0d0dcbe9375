"""Run the selected stages in order; each writes <run_dir>/<stage>/stage.json when it finishes."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
import time
from collections.abc import Callable
from typing import Any

from deploy.files import write_json, write_text
from pipeline.config import STAGES, ConfigError, PipelineConfig, to_yaml
from pipeline.distill import distill_student
from pipeline.export import run_export
from pipeline.quantize import run_quantize
from pipeline.stage_data import run_data
from pipeline.train import train_role

# stage name -> (function of (config, stage folder, progress), the config section it depends on)
STAGE_FUNCTIONS: dict[str, tuple[Callable[..., dict], str]] = {
    "data": (lambda cfg, out, progress: run_data(cfg.data, out, progress), "data"),
    "teacher": (lambda cfg, out, progress: train_role(cfg, "teacher", resume=True, progress=progress), "teacher"),
    "distill": (lambda cfg, out, progress: distill_student(cfg, resume=True, progress=progress), "distill"),
    "export": (run_export, "export"),
    "quantize": (run_quantize, "quantize"),
}


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that change results."""
    out = {"python": platform.python_version()}
    for module in ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "pycocotools"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # not installed, or a broken install: record, don't fail
            out[module] = "missing"
    return out


def config_hash(section: Any) -> str:
    """Hash of one config section, recorded in stage.json (the caching issue compares it)."""
    blob = json.dumps(dataclasses.asdict(section), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def select_stages(cfg: PipelineConfig, requested: list[str] | None) -> list[str]:
    """The stages to run, in pipeline order; unknown names fail with the valid ones."""
    names = requested or cfg.stages
    unknown = [n for n in names if n not in STAGE_FUNCTIONS]
    if unknown:
        raise ConfigError(f"unknown stage '{unknown[0]}'; valid stages: {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]


def run_pipeline(cfg: PipelineConfig, stages: list[str] | None = None, progress: bool = True) -> dict[str, dict]:
    """Run the stages; return each stage's result."""
    selected = select_stages(cfg, stages)
    run_dir = cfg.run_dir
    write_text(run_dir / "config.yaml", to_yaml(cfg))
    results = {}
    for name in selected:
        function, section = STAGE_FUNCTIONS[name]
        print(f"[{name}] start", flush=True)
        start = time.perf_counter()
        results[name] = function(cfg, run_dir / name, progress)
        wall = time.perf_counter() - start
        write_json(run_dir / name / "stage.json", {
            "stage": name, "config_hash": config_hash(getattr(cfg, section)), "wall_s": round(wall, 2),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        })
        print(f"[{name}] done in {wall:.1f}s", flush=True)
    return results
