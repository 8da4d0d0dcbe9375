"""An mmdetection / mmengine checkpoint -> a plain one edgekd reads with weights_only=True: the model's
state dict and its classes, nothing else (no optimizer, no message hub, no pickled mmengine objects).

    python -m pipeline.tools.convert_mmdet gfl_r101.pth --out gfl_r101_plain.pth [--classes a,b,...]

Run it where mmengine is installed: the full unpickling it needs runs code from the file, so convert only
checkpoints you trust (the published mmdetection model zoo, your own training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from deploy.errors import InputError
from deploy.files import atomic_path
from pipeline.cli import guarded


def convert(path: Path, out: Path, classes: list[str] | None = None) -> tuple[int, list[str]]:
    """Write out/ as {'state_dict', 'meta': {'classes'}}; return (tensors written, classes)."""
    try:
        import mmengine  # noqa: F401  (its classes must be importable to unpickle the checkpoint)
    except ImportError:
        raise InputError("convert_mmdet needs mmengine where it runs: pip install mmengine (or pip install -e .[mmdet])") from None
    state = torch.load(path, map_location="cpu", weights_only=False)
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise InputError(f"{path}: holds no state_dict")
    meta = state.get("meta") or {}
    found = classes or meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if not found:
        raise InputError(f"{path}: its meta holds no classes; pass them with --classes a,b,...")
    plain = {k: v.detach().clone() for k, v in weights.items() if torch.is_tensor(v)}
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
