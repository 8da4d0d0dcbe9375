"""Letterbox preprocessing shared by training-time validation, export parity and the device.

Images are HWC uint8 RGB; model input is CHW float32, ImageNet-normalised, letterboxed into
(height, width) with the resized image centred and the padding at the mean colour (0 after
normalisation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

# ImageNet statistics in 0..255 RGB, as torchvision and timm's ImageNet weights expect.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
# A uint8-input model's letterbox padding: the mean colour as near as uint8 gets (the float path pads
# with exactly 0 after normalisation; this pads with at most 0.5 / 57 off it).
PAD_UINT8 = tuple(int(round(m)) for m in MEAN)


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the model input: input = original * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: int
    pad_y: int
    orig_height: int
    orig_width: int


def load_image(path: str) -> np.ndarray:
    """Read an image file as HWC uint8 RGB (EXIF orientation ignored, as COCO's sizes are)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _resize_pil(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _resize_opencv(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    # INTER_AREA averages like PIL's bilinear on a strong reduction, where INTER_LINEAR would skip pixels
    # and alias; down to half size every source pixel still weighs in, and INTER_LINEAR is 5x faster than
    # INTER_AREA's general path (0.16 against 0.80 ms, 320x240 -> 192x256, docs/results.md).
    strong = width * 2 < image.shape[1] or height * 2 < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if strong else cv2.INTER_LINEAR)


# How the letterbox resizes. PIL is the default everywhere training and evaluation run, so that every
# machine trains on the same pixels whether or not OpenCV is installed; a device may choose OpenCV
# (deploy/benchmark.py --resize opencv): 1.5x faster on the default data at the same AP (docs/results.md).
RESIZERS = {"pil": _resize_pil, "opencv": _resize_opencv}
resize_backend = "pil"


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize an HWC uint8 image to fit (height, width) keeping its aspect ratio; return the resized
    image (not yet padded) and the mapping."""
    h, w = image.shape[:2]
    out_h, out_w = size
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (new_h, new_w) != (h, w):
        image = RESIZERS[resize_backend](image, new_w, new_h)
    return image, Letterbox(scale, (out_w - new_w) // 2, (out_h - new_h) // 2, h, w)


def preprocess(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """HWC uint8 RGB image -> CHW float32 model input of (height, width), and its letterbox mapping."""
    resized, lb = letterbox(image, size)
    out = np.zeros((3, size[0], size[1]), dtype=np.float32)
    h, w = resized.shape[:2]
    norm = (resized.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    out[:, lb.pad_y : lb.pad_y + h, lb.pad_x : lb.pad_x + w] = norm.transpose(2, 0, 1)
    return out, lb


@functools.lru_cache(maxsize=8)
def _padded_canvas(height: int, width: int) -> np.ndarray:
    """An HWC image of the pad colour, made once per size: filling one pixel by pixel from a 3-vector
    took 0.36 ms at 256 x 256, copying this one 0.01 ms."""
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = PAD_UINT8
    canvas.flags.writeable = False
    return canvas


def letterbox_uint8(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """HWC uint8 RGB image -> HWC uint8 letterboxed to (height, width), padded with PAD_UINT8: the whole
    host side of a model exported with a uint8 input (cast, mean/std and layout run in its graph)."""
    resized, lb = letterbox(image, size)
    out = _padded_canvas(size[0], size[1]).copy()
    h, w = resized.shape[:2]
    out[lb.pad_y : lb.pad_y + h, lb.pad_x : lb.pad_x + w] = resized
    return out, lb


def model_input(image: np.ndarray, size: tuple[int, int], uint8: bool = False) -> tuple[np.ndarray, Letterbox]:
    """One image as the model takes it: float32 CHW normalised (the default contract), or, for a model
    exported with a uint8 input, uint8 HWC letterboxed."""
    return letterbox_uint8(image, size) if uint8 else preprocess(image, size)


def preprocess_batch(paths: Sequence[str], size: tuple[int, int], uint8: bool = False) -> tuple[np.ndarray, list]:
    """Image files -> a model-input batch ([N, 3, H, W] float32, or [N, H, W, 3] uint8) and one Letterbox
    per image."""
    shape = (len(paths), size[0], size[1], 3) if uint8 else (len(paths), 3, size[0], size[1])
    batch = np.zeros(shape, dtype=np.uint8 if uint8 else np.float32)
    infos = []
    for i, path in enumerate(paths):
        batch[i], lb = model_input(load_image(path), size, uint8)
        infos.append(lb)
    return batch, infos


def unletterbox_boxes(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Boxes [K, 4] xyxy in model-input pixels -> xyxy in original image pixels, clipped to the image."""
    out = boxes.astype(np.float32, copy=True)
    out[:, 0::2] = (out[:, 0::2] - lb.pad_x) / lb.scale
    out[:, 1::2] = (out[:, 1::2] - lb.pad_y) / lb.scale
    np.clip(out[:, 0::2], 0, lb.orig_width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, lb.orig_height, out=out[:, 1::2])
    return out
