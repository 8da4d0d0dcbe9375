"""Weights files: a trained detector as a compact float16 state dict (load_model_state copies it into a
float32 model) with everything needed to use it
safely elsewhere (model config, classes, preprocessing), and the checks a user's or the shipped
teacher passes before anything distils from it.

A weights file is a checkpoint (distill/checkpoint.py) without optimizer or RNG state, read the same way
(weights_only=True).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from deploy.errors import InputError
from deploy.files import sha256_file
from deploy.preprocess import MEAN, STD
from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.models.config import ModelConfig

# How our inputs are made (deploy/preprocess.py): a model trained on other inputs sees another world.
PREPROCESS = {"color": "RGB", "mean": list(MEAN), "std": list(STD), "letterbox": "centred, padded at the mean"}
# ModelConfig keys that do not change the network a state dict fits (weights source, loss, assignment).
NOT_ARCHITECTURE = {"pretrained", "loss_weights", "box_loss", "center_sampling", "atss_topk", "freeze_bn"}


def write_weights(checkpoint: str | Path, out: str | Path, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trainer checkpoint -> a float16 weights file (atomic); returns what it holds, less the tensors."""
    state = load_checkpoint(checkpoint)
    model = {k: (v.half() if v.is_floating_point() else v) for k, v in state["model"].items()}
    meta = {"config": state["config"], "classes": list(state["classes"]), "preprocess": PREPROCESS,
            "step": state.get("step"), "epoch": state.get("epoch"), "train": state.get("train"), **(record or {})}
    save_checkpoint(out, {"model": model, **meta})
    return meta


def architecture_differences(stored: dict[str, Any], expected: ModelConfig) -> list[str]:
    """'key: stored vs expected' for every architecture key in which a file's model config differs."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        return [f"{k}: unknown to this version" for k in unknown]
    want = asdict(expected)
    full = asdict(ModelConfig(**stored))
    return [f"{k}: {full[k]!r} there vs {want[k]!r} here" for k in want
            if k not in NOT_ARCHITECTURE and full[k] != want[k]]


def check_weights(path: str | Path, model: ModelConfig, classes: list[str], expected_sha256: str | None = None,
                  setting: str = "teacher.checkpoint") -> dict[str, Any]:
    """The checkpoint state at `path`, after checking its hash (when one is expected), classes, architecture
    and preprocessing against what the run needs; one InputError line naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{setting}: {path} not found (set {setting}: null to train one)")
    if expected_sha256:
        found = sha256_file(path)
        if found != expected_sha256.lower():
            raise InputError(f"{path}: SHA-256 {found} does not match {setting}_sha256 {expected_sha256} (the file is "
                             f"corrupt or another one; restore it with git, or set {setting}: null to train a new one)")
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or not state.get("classes"):
        raise InputError(f"{path}: holds no model config or classes (not an edgekd checkpoint or weights file)")
    if list(state["classes"]) != list(classes):
        raise InputError(f"{path}: trained on classes {list(state['classes'])[:4]}..., the dataset has "
                         f"{list(classes)[:4]}... ({len(state['classes'])} vs {len(classes)}): set {setting}=null to "
                         f"train one on this dataset (with {setting.split('.')[0]}.train), or {setting}=PATH to a "
                         "checkpoint trained on these classes")
    check_architecture(path, state, model)
    check_preprocessing(path, state)
    return state


def check_architecture(path: str | Path, state: dict[str, Any], model: ModelConfig) -> None:
    """One line naming the file when its model config describes another network than `model`."""
    differences = architecture_differences(state["config"], model)
    if differences:
        raise InputError(f"{path}: its architecture differs from the model config: {'; '.join(differences[:3])}")


def check_preprocessing(path: str | Path, state: dict[str, Any]) -> None:
    """One line naming the file when it was saved for other inputs than deploy/preprocess.py makes."""
    preprocess = state.get("preprocess", PREPROCESS)  # trainer checkpoints predate the field: they are ours
    if {k: preprocess.get(k) for k in ("color", "mean", "std")} != {k: PREPROCESS[k] for k in ("color", "mean", "std")}:
        raise InputError(f"{path}: saved with other preprocessing ({preprocess}); edgekd feeds {PREPROCESS}")

