"""What both INT8 back ends (export/onnxruntime_int8.py, export/openvino_int8.py) share: the calibration
images, drawn from train (never val) and read as model inputs, and the rule for the nodes that stay in
float: the decode, every node from which no convolution is reachable (tail_nodes).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import numpy as np

from deploy.coco import CocoDataset
from deploy.errors import InputError
from deploy.preprocess import load_image, preprocess

MIN_CALIBRATION_IMAGES = 8


def calibration_paths(train: CocoDataset, count: int, seed: int = 0) -> list[str]:
    """`count` training image paths drawn at random (seeded): calibration never sees val."""
    if count < MIN_CALIBRATION_IMAGES:
        raise InputError(f"quantize.calib_images={count}: at least "
                         f"{MIN_CALIBRATION_IMAGES} calibration images are needed")
    if len(train.images) < MIN_CALIBRATION_IMAGES:
        raise InputError(f"quantize: the train split ({train.image_dir}) holds {len(train.images)} images; calibration "
                         f"needs at least {MIN_CALIBRATION_IMAGES}")
    if len(train.images) < count:  # as NNCF's subset_size does: every image there is, and say so
        print(f"warning: quantize.calib_images={count}, but the train split ({train.image_dir}) holds only "
              f"{len(train.images)} images: calibrating on all of them", flush=True)
        count = len(train.images)
    picked = random.Random(seed).sample(range(len(train.images)), count)
    return [train.image_path(train.images[i]) for i in sorted(picked)]


def model_input(path: str, input_size: tuple[int, int]) -> np.ndarray:
    """One image file as a preprocessed [1, 3, H, W] float32 model input."""
    return preprocess(load_image(path), input_size)[0][None]


def calibration_batches(paths: Sequence[str], input_size: tuple[int, int]) -> Iterable[np.ndarray]:
    """Preprocessed [1, 3, H, W] float32 inputs, one per image, read lazily."""
    for path in paths:
        yield model_input(path, input_size)


# ---------------------------------------------------------------------------------------------------
# The decode: nodes from which no convolution is reachable


def tail_nodes(names: Sequence[str], consumers: dict[str, list[str]], is_conv: dict[str, bool]) -> set[str]:
    """Nodes (in topological order `names`) that reach no convolution downstream and are not one."""
    feeds_conv: dict[str, bool] = {}
    for name in reversed(names):
        # a consumer outside `names` (an op inside a subgraph, such as an If body) is no convolution of this graph
        feeds_conv[name] = any(is_conv.get(c, False) or feeds_conv.get(c, False) for c in consumers.get(name, []))
    return {n for n in names if not is_conv[n] and not feeds_conv[n]}
