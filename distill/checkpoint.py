"""Checkpoints: written atomically, read with weights_only=True, checked against the model they load into.

A checkpoint is a dict: model (state_dict), config (the ModelConfig as a dict), classes, epoch, step,
optimizer, scheduler, scaler, rng, and train (the TrainConfig as a dict).
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy.errors import InputError
from deploy.files import atomic_path, sha256_file

ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6: a zip archive
PICKLE_MAGIC = b"\x80"  # torch.save before 1.6: pickles (protocol 2 and up open with PROTO 0x80)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, renamed into place: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (weights_only); a missing, truncated or foreign file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, or pickled objects weights_only refuses
        raise InputError(f"{path}: cannot be read as a checkpoint, truncated or not one of ours "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise InputError(f"{path}: not an edgekd checkpoint (no 'model' state dict)")
    return state


def file_damage(path: str | Path) -> str | None:
    """Why `path` cannot be a torch.save file, found without unpickling anything (so a truncated file is
    told apart from one whose pickled objects weights_only=True refuses); None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
        if not head:
            return "empty file"
        if head == ZIP_MAGIC:  # the central directory sits at the end: a cut file has none
            return None if zipfile.is_zipfile(path) else "truncated or damaged (its zip directory is missing)"
        if not head.startswith(PICKLE_MAGIC):
            return f"not a PyTorch file (it starts with {head!r}, not a zip archive or a pickle)"
        f.seek(0)
        try:  # walked, never run: magic number, protocol, sys_info, the object, its storages' keys
            for _ in range(5):
                for _ in pickletools.genops(f):
                    pass
        except ValueError:  # pickle exhausted before STOP
            return "truncated or damaged (a pickle in it ends early)"
    return None


def error_line(error: Exception) -> str:
    """An exception as one short line: torch.load's weights_only refusal by its WeightsUnpickler line (the
    lines before it are advice about torch versions), any other by its first line; first sentence only."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((x for x in lines if x.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    line = line.removeprefix("WeightsUnpickler error: ").split(". ")[0][:160]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def check_sha256(path: str | Path, expected: str | None, setting: str) -> None:
    """When a hash is stated for `setting`, the file must exist and have it."""
    if not expected:
        return
    if not Path(path).is_file():
        raise InputError(f"{setting}: {path} not found")
    found = sha256_file(path)
    if found != expected.lower():
        raise InputError(f"{path}: SHA-256 {found} does not match {setting}_sha256 {expected} (a corrupt or other "
                         f"file: replace it, or set {setting}_sha256 to this file's hash or null)")


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, extra_ok: bool = False) -> None:
    """Load weights that must match the model; name the first mismatching keys and shapes. With
    extra_ok, keys the model lacks are ignored (a classifier's head when loading a backbone)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [] if extra_ok else [k for k in state if k not in own]
    shapes = [f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:3])}")
        raise InputError(f"{source}: architecture differs from the model config ({len(shapes)} shapes, "
                         f"{len(missing)} missing, {len(unexpected)} unexpected): {' | '.join(parts)}")
    model.load_state_dict({k: state[k] for k in own})


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (weights_only); accepts a bare state dict or a {'model'|'state_dict': ...} dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pretrained: weights file not found: {path} (use none, imagenet or a path to a .pth)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, pickled objects
        raise InputError(f"{path}: cannot be read as weights ({type(e).__name__}: {e})") from e
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path}: expected a state dict of tensors")
    return data
