"""Torch datasets over a validated CocoDataset (deploy/coco.py): augmentation with transforms.v2, then
the same letterbox + normalisation as deploy/preprocess.py, so training sees what the device sees.

Augmentation draws from an RNG seeded by (seed, epoch, index), so a sample is the same whatever the
number of workers, and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from deploy.coco import CocoDataset
from deploy.errors import InputError
from deploy.preprocess import Letterbox, preprocess

AUGMENTATIONS = ("hflip", "photometric", "zoom_out", "iou_crop")


def build_augmentation(names: list[str]) -> v2.Compose:
    """transforms.v2 pipeline on (image, boxes); boxes move with the image, empty ones are dropped."""
    steps: list[v2.Transform] = []
    for name in names:
        if name == "photometric":
            steps.append(v2.RandomPhotometricDistort(p=0.5))
        elif name == "zoom_out":
            steps.append(v2.RandomZoomOut(fill={tv_tensors.Image: (124, 116, 104), "others": 0}, side_range=(1.0, 2.0),
                                          p=0.3))
        elif name == "iou_crop":
            steps.append(v2.RandomApply([v2.RandomIoUCrop()], p=0.3))
        elif name == "hflip":
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        else:
            raise ValueError(f"train.augment: unknown augmentation '{name}'; valid: {', '.join(AUGMENTATIONS)}")
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)


def image_region(lb: Letterbox) -> tuple[float, float, float, float]:
    """The resized image's own part of the letterboxed input, xyxy input pixels (the rest is padding)."""
    new_w = max(1, int(round(lb.orig_width * lb.scale)))
    new_h = max(1, int(round(lb.orig_height * lb.scale)))
    return (float(lb.pad_x), float(lb.pad_y), float(lb.pad_x + new_w), float(lb.pad_y + new_h))


class DetectionDataset(Dataset):
    """Items: (image [3, H, W] float32, {'boxes': [K, 4] xyxy input pixels, 'labels': [K], 'image_id',
    'valid': [4] the image's own region, xyxy input pixels, outside which the letterbox pads})."""

    def __init__(self, coco: CocoDataset, input_size: tuple[int, int], augment: list[str] | None = None, seed: int = 0):
        self.coco, self.input_size, self.seed, self.epoch = coco, tuple(input_size), seed, 0
        self.augment = build_augmentation(augment) if augment else None

    def __len__(self) -> int:
        return len(self.coco.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        info = self.coco.images[index]
        iid = info["id"]
        try:
            with Image.open(self.coco.image_path(info)) as im:
                image = np.array(im.convert("RGB"))  # writable: torch.from_numpy shares it
        except Exception as e:  # changed on disk after the data stage decoded it
            raise InputError(f"{self.coco.image_path(info)}: cannot be read ({type(e).__name__}: {e}); "
                             "rerun the data stage") from e
        keep = ~self.coco.crowd[iid]  # crowd regions are not objects to learn
        boxes, labels = self.coco.boxes[iid][keep], self.coco.labels[iid][keep]
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
                img_t, out = self.augment(
                    tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                    {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY",
                                                       canvas_size=image.shape[:2]),
                     "labels": torch.from_numpy(labels)})
            image = img_t.permute(1, 2, 0).numpy()
            boxes, labels = out["boxes"].numpy(), out["labels"].numpy()
        x, lb = preprocess(np.ascontiguousarray(image), self.input_size)
        boxes = boxes * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float32)
        target = {"boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
                  "labels": torch.from_numpy(labels.astype(np.int64)), "image_id": iid,
                  "valid": torch.tensor(image_region(lb), dtype=torch.float32)}
        return torch.from_numpy(x), target


def collate(batch: list) -> tuple[torch.Tensor, list[dict]]:
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
