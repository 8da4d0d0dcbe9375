"""The data stage: write the generated dataset when it is missing or stale, then validate both splits.

Validation runs here, before any training, so a missing image or a broken json fails in seconds.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from deploy.coco import CocoDataset, dataset_stats, decode_image_files, load_coco
from deploy.errors import InputError
from deploy.files import write_json
from distill.data.fashion_scenes import generate, is_current
from distill.settings import TrainConfig
from pipeline.config import DataConfig, PipelineConfig


def load_split(data: DataConfig, split: Literal["train", "val", "select"]) -> CocoDataset:
    """Load and validate one split of the configured dataset. With data.select_images = N, "train" is the
    train file less its last N images and "select" those N (the selection split): every training stage
    reads "train", so no stage ever sees a selection image."""
    annotations, images = data.split_paths("val" if split == "val" else "train")
    ds = load_coco(str(annotations), str(images), check_files=data.check_images)
    n = data.select_images
    if split == "val" or (split == "train" and not n):
        return ds
    if not n:
        raise InputError("data.select_images: 0, so there is no selection split (set it, e.g. data.select_images=300)")
    if n >= len(ds.images):
        raise InputError(f"data.select_images: {n} of the {len(ds.images)} training images in {annotations} "
                         "leaves none to train on; lower it")
    return replace(ds, images=ds.images[:-n] if split == "train" else ds.images[-n:])


def monitor_split(data: DataConfig, train: TrainConfig, role: str) -> CocoDataset | None:
    """The split a training evaluates on between epochs: None for val (the trainer's default), the selection
    split for `monitor: select` (refused in one line when the config holds none out)."""
    if train.monitor == "val":
        return None
    if not data.select_images:
        raise InputError(f"{role}.train.monitor: select evaluates on the selection split, and data.select_images "
                         "is 0; hold some training images out (data.select_images=300) or monitor val")
    return load_split(data, "select")


def check_schedule_fits(data: DataConfig, train: TrainConfig, role: str, images: int) -> None:
    """With a selection split held out, refuse a schedule that asks for more training images than remain
    (without one, max_train_images above the split's size means all of it, as it always has)."""
    if not data.select_images:
        return
    asked = max(train.batch_size, train.max_train_images)
    if asked > images:
        what = "batch_size" if train.batch_size > images else "max_train_images"
        raise InputError(f"data.select_images: {data.select_images} leaves {images} training images, fewer than "
                         f"{role}.train.{what} ({asked}); lower one of them")


def format_stats(stats: dict[str, dict[str, Any]]) -> str:
    """Per-split counts and per-class boxes as a plain-text table."""
    splits = list(stats)
    rows = [("images", "images"), ("negatives", "negatives"), ("boxes", "boxes")]
    lines = [f"{'':<14}" + "".join(f"{s:>10}" for s in splits)]
    lines += [f"{label:<14}" + "".join(f"{stats[s][key]:>10}" for s in splits) for label, key in rows]
    for bucket in ("small", "medium", "large"):
        lines.append(f"{'  ' + bucket:<14}" + "".join(f"{stats[s]['boxes_per_size'][bucket]:>10}" for s in splits))
    for name in stats[splits[0]]["boxes_per_class"]:
        lines.append(f"{'  ' + name:<14}" + "".join(f"{stats[s]['boxes_per_class'][name]:>10}" for s in splits))
    return "\n".join(lines)


def run_stage(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    return run_data(cfg.data, out_dir, progress)


def run_data(data: DataConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Generate (if configured and stale) and validate the dataset; write <out_dir>/stats.json."""
    result: dict[str, Any] = {"root": data.root}
    if data.generator is not None:
        if is_current(data.generator, data.root):
            print(f"{data.name}: up to date in {data.root}")
            result["generated"] = False
        else:
            seconds = generate(data.generator, data.root, progress=progress)
            print(f"{data.name}: wrote {data.root} in {seconds:.1f}s")
            result.update(generated=True, generation_s=round(seconds, 1))
    elif not Path(data.root).is_dir():
        raise InputError(f"data.root: dataset folder not found: {data.root} (point data.root at a COCO-layout dataset)")
    start = time.perf_counter()
    # The selection split, when held out, is refused here (before any training) if it leaves nothing to train on.
    splits = {split: load_split(data, split) for split in ("train", "val", "select")[: 3 if data.select_images else 2]}
    if data.check_images:  # once per data stage: every image decoded in full, so training never meets a cut file
        decode_start = time.perf_counter()
        for ds in splits.values():
            decode_image_files(ds)
        result["decode_s"] = round(time.perf_counter() - decode_start, 2)
    train = splits["train"]
    if not any(len(train.boxes[image["id"]]) for image in train.images):  # would train to 0 AP without a word
        raise InputError(f"{splits['train'].annotations_path}: the train split holds no annotations (every image "
                         "is a negative); a detector cannot learn from it")
    if splits["train"].categories != splits["val"].categories:
        raise InputError(f"{splits['val'].annotations_path}: categories differ from {splits['train'].annotations_path}")
    for ds in (splits["train"], splits["val"]):  # the selection split shares the train file's warnings
        for warning in ds.warnings:
            print(f"warning: {warning}")
    stats = {split: dataset_stats(ds) for split, ds in splits.items()}
    result.update(validation_s=round(time.perf_counter() - start, 2), stats=stats)
    if "decode_s" in result:
        print(f"{data.name}: decoded all {sum(len(ds.images) for ds in splits.values())} images "
              f"in {result['decode_s']} s")
    print(format_stats(stats))
    write_json(out_dir / "stats.json", result)
    return result
