"""An mmdetection / mmengine checkpoint -> a plain one edgekd reads with weights_only=True: the model's
state dict and its classes, nothing else (no optimizer, no message hub, no pickled mmengine objects).

    python -m pipeline.tools.convert_mmdet gfl_r101.pth --out gfl_r101_plain.pth [--classes a,b,...]

Run it where mmengine is installed: the full unpickling it needs runs code from the file, so convert only
checkpoints you trust (the published mmdetection model zoo, your own training).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deploy.errors import InputError
from deploy.files import atomic_path
from pipeline.cli import guarded

# torch and distill/ are imported by the functions that read and write checkpoints, so that
# `edgekd convert-mmdet --help` loads no torch.


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links and relative spellings too)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def read_any_checkpoint(path: Path) -> object:
    """The whole checkpoint, unpickled with its own classes (mmengine's); one line naming the file when it
    is missing, cut short or not a checkpoint."""
    import torch

    from distill.checkpoint import error_line, file_damage

    if not path.is_file():
        raise InputError(f"{path}: not found")
    damage = file_damage(path)
    if damage:
        raise InputError(f"{path}: {damage}; download or copy it again")
    try:
        import mmengine  # noqa: F401  (its classes must be importable to unpickle the checkpoint)
    except ImportError as exc:
        raise InputError("convert_mmdet needs mmengine where it runs: pip "
                         "install mmengine (or pip install -e .[mmdet])") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  cut inside, or a class from a package missing here
        raise InputError(f"{path}: cannot be unpickled ({error_line(e)}); a truncated copy, or objects of a package "
                         "this Python lacks (install mmdet beside mmengine)") from e


def convert(path: Path, out: Path, classes: list[str] | None = None) -> tuple[int, list[str]]:
    """Write out/ as {'state_dict', 'meta': {'classes'}}; return (tensors written, classes)."""
    import torch

    from distill.models.mmdet import head_classes

    if same_file(path, out):  # the rename onto it would replace the only copy of the original
        raise InputError(f"--out {out}: is the checkpoint being converted; write to another file")
    state = read_any_checkpoint(path)
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, "
                         "no state_dict; give the mmdetection checkpoint itself")
    meta = state.get("meta") or {}
    found = classes or meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if not found:
        raise InputError(f"{path}: its meta holds no classes; pass them with --classes a,b,...")
    plain = {k: v.detach().clone() for k, v in weights.items() if torch.is_tensor(v)}
    head_classes(plain, [str(c) for c in found], str(path), "--classes" if classes else "its meta")
    with atomic_path(out) as tmp:
        torch.save({"state_dict": plain, "meta": {"classes": [str(c) for c in found]}}, tmp)
    return len(plain), [str(c) for c in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.convert_mmdet", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", help="comma-separated class names, when the checkpoint's meta has none")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def body() -> None:
        count, classes = convert(args.checkpoint, args.out, args.classes.split(",") if args.classes else None)
        print(f"{args.out}: {count} tensors, {len(classes)} classes ({', '.join(classes[:4])}, ...)")

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
