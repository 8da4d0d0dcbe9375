"""Letterbox preprocessing shared by training-time validation, export parity and the device.

Images are HWC uint8 RGB; model input is CHW float32, ImageNet-normalised, letterboxed into
(height, width) with the resized image centred and the padding at the mean colour (0 after
normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

# ImageNet statistics in 0..255 RGB, as torchvision and timm's ImageNet weights expect.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


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


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize an HWC uint8 image to fit (height, width) keeping its aspect ratio; return the resized
    image (not yet padded) and the mapping."""
    h, w = image.shape[:2]
    out_h, out_w = size
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (new_h, new_w) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    return image, Letterbox(scale, (out_w - new_w) // 2, (out_h - new_h) // 2, h, w)


def preprocess(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """HWC uint8 RGB image -> CHW float32 model input of (height, width), and its letterbox mapping."""
    resized, lb = letterbox(image, size)
    out = np.zeros((3, size[0], size[1]), dtype=np.float32)
    h, w = resized.shape[:2]
    norm = (resized.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    out[:, lb.pad_y : lb.pad_y + h, lb.pad_x : lb.pad_x + w] = norm.transpose(2, 0, 1)
    return out, lb


def preprocess_batch(paths: Sequence[str], size: tuple[int, int]) -> tuple[np.ndarray, list]:
    """Image files -> [N, 3, H, W] float32 batch and one Letterbox per image."""
    batch = np.zeros((len(paths), 3, size[0], size[1]), dtype=np.float32)
    infos = []
    for i, path in enumerate(paths):
        batch[i], lb = preprocess(load_image(path), size)
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
