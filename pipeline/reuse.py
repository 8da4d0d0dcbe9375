"""Whether a checkpoint on disk was trained with the settings a command would train now.

Resuming or reusing a run trained under other settings would report (or continue) a model of another
configuration as this one. The pipeline sets such a stage aside itself (its config hash changed); the
direct commands (`pipeline.stages.train`, `pipeline.stages.distill`) and the ablation's reuse of finished variants
ask `changed_setting` instead, and refuse with the first setting that differs.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploy.errors import InputError
from distill.checkpoint import load_checkpoint
from distill.losses.detection import DEFAULT_WEIGHTS
from distill.models.detector import ModelConfig
from distill.settings import DistillConfig, TrainConfig

# Settings that do not change what a run learns, so a resumed or reused run may differ in them.
RUN_ONLY = {"eval_every", "max_val_images", "log_every", "save_every_steps", "workers", "device",
            "min_gain_over_baseline"}  # not `monitor`: best.pt's AP would compare two splits across a resume


def _resolved(settings: dict[str, Any]) -> dict[str, Any]:
    """Model settings with loss_weights null (the head's defaults) written out, as older checkpoints stored them."""
    if "loss_weights" in settings and not settings["loss_weights"]:
        settings = {**settings, "loss_weights": list(DEFAULT_WEIGHTS[settings["name"]])}
    return settings


def changed_setting(checkpoint: Path, role: str, train: TrainConfig, model: ModelConfig,
                    distill: DistillConfig | None = None, teacher: Path | None = None) -> str | None:
    """How `checkpoint` was trained differently from `role`'s train and model settings now (and, for a
    distilled student, its distill settings and teacher), as '<role>.train.lr: 0.001 there, 0.5 now'; or
    None. Keys a checkpoint predates count as their defaults."""
    state = load_checkpoint(checkpoint)
    if teacher is not None and state.get("teacher", str(teacher)) != str(teacher):
        return f"teacher: {state['teacher']} there, {teacher} now"
    sections = [(f"{role}.train", state.get("train", {}), train, TrainConfig()),
                (f"{role}.model", state.get("config", {}), model, ModelConfig())]
    if distill is not None:
        stored = state.get("distill", {"method": "none"})  # the student stage's checkpoints hold no distill section
        if not stored.get("method") == distill.method == "none":  # without distillation its settings are moot
            sections.append(("distill", stored, distill, DistillConfig()))
    for section, stored, now, default in sections:
        was_all, now_all = _resolved({**asdict(default), **stored}), _resolved(asdict(now))
        for key, value in now_all.items():
            if key not in RUN_ONLY and was_all.get(key) != value:
                return f"{section}.{key}: {was_all.get(key)!r} there, {value!r} now"
    return None


def refuse_other_settings(out_dir: Path, role: str, train: TrainConfig, model: ModelConfig,
                          distill: DistillConfig | None = None, teacher: Path | None = None) -> None:
    """Before resuming out_dir/last.pt: one line naming the first setting it was trained with otherwise."""
    last = out_dir / "last.pt"
    if last.is_file() and (change := changed_setting(last, role, train, model, distill, teacher)):
        raise InputError(f"{last}: trained with other settings ({change}); remove {out_dir} (or move it away) "
                         "to train it again, or run with the settings it was trained with")
