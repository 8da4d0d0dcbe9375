"""Load and validate a COCO-format detection dataset (any: fashion-scenes, COCO itself, a user's own).

Everything is checked here, where the data enters, so that training and evaluation can trust it:
schema, ids, references, image files (present, readable, the size the json says). Boxes with
non-positive size are dropped and counted; boxes poking out of the image are clipped and counted.
Category ids need not be contiguous: labels are 0..C-1 in increasing id order and map back.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from deploy.errors import InputError

# COCO's area ranges (pixels^2), as COCOeval uses them.
SMALL_AREA = 32**2
MEDIUM_AREA = 96**2


@dataclass
class CocoDataset:
    """A validated COCO dataset. Boxes are xyxy in original image pixels; labels are contiguous."""

    annotations_path: str
    image_dir: str
    images: list[dict]  # {"id", "file_name", "width", "height"}, in file order
    categories: list[dict]  # sorted by id
    boxes: dict[int, np.ndarray]  # image id -> [K, 4] float32 xyxy
    labels: dict[int, np.ndarray]  # image id -> [K] int64 in 0..C-1
    crowd: dict[int, np.ndarray]  # image id -> [K] bool (COCOeval ignores crowd matches; training skips them)
    areas: dict[int, np.ndarray]  # image id -> [K] float32, the json's area (mask area for COCO)
    warnings: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def cat_ids(self) -> list[int]:
        """Original category id of each contiguous label."""
        return [c["id"] for c in self.categories]

    def image_path(self, image: dict) -> str:
        return os.path.join(self.image_dir, image["file_name"])

    def to_coco_dict(self) -> dict:
        """The cleaned dataset as a COCO json dict (for pycocotools' COCO as ground truth)."""
        anns = []
        for img in self.images:
            iid = img["id"]
            for box, label, crowd, area in zip(self.boxes[iid], self.labels[iid], self.crowd[iid], self.areas[iid]):
                x1, y1, x2, y2 = (float(v) for v in box)
                anns.append({
                    "id": len(anns) + 1, "image_id": iid, "category_id": self.cat_ids[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": int(crowd),
                })
        return {"images": self.images, "categories": self.categories, "annotations": anns}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: '{key}' must be a list (COCO detection format), got "
                             f"{type(data.get(key)).__name__}")
    return data


def _check_images(path: str, images: list) -> list[dict]:
    out, seen = [], set()
    for i, img in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(img, dict):
            raise InputError(f"{where}: expected an object, got {img!r}")
        if not isinstance(img.get("id"), int) or isinstance(img.get("id"), bool):
            raise InputError(f"{where}.id: expected an integer, got {img.get('id')!r}")
        if img["id"] in seen:
            raise InputError(f"{where}.id: duplicate image id {img['id']}")
        seen.add(img["id"])
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise InputError(f"{where}.file_name: expected a file name, got {img.get('file_name')!r}")
        for key in ("width", "height"):
            v = img.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{where}.{key}: expected a positive integer, got {v!r}")
        out.append({"id": img["id"], "file_name": img["file_name"], "width": img["width"], "height": img["height"]})
    return out


def _check_categories(path: str, categories: list) -> list[dict]:
    out, seen = [], set()
    for i, cat in enumerate(categories):
        where = f"{path}: categories[{i}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool):
            raise InputError(f"{where}.id: expected an integer, got "
                             f"{cat.get('id') if isinstance(cat, dict) else cat!r}")
        if cat["id"] in seen:
            raise InputError(f"{where}.id: duplicate category id {cat['id']}")
        seen.add(cat["id"])
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            raise InputError(f"{where}.name: expected a name, got {cat.get('name')!r}")
        out.append({"id": cat["id"], "name": cat["name"], "supercategory": str(cat.get("supercategory", ""))})
    if not out:
        raise InputError(f"{path}: 'categories' is empty: a detection dataset needs at least one class")
    return sorted(out, key=lambda c: c["id"])


def check_image_files(dataset: CocoDataset) -> None:
    """Every image exists, opens, and has the size the json says (header read only: fast)."""
    missing = [img for img in dataset.images if not os.path.isfile(dataset.image_path(img))]
    if missing:
        raise InputError(
            f"{dataset.annotations_path}: {len(missing)} of {len(dataset.images)} images are missing "
            f"from {dataset.image_dir}, first: {missing[0]['file_name']} (image id {missing[0]['id']})")
    for img in dataset.images:
        file = dataset.image_path(img)
        try:
            with Image.open(file) as im:
                width, height = im.size
        except Exception as e:  # PIL raises many types for a bad file
            raise InputError(f"{file}: cannot be read as an image ({type(e).__name__}: {e})") from e
        if (width, height) != (img["width"], img["height"]):
            raise InputError(
                f"{file}: is {width}x{height} pixels but {dataset.annotations_path} says "
                f"{img['width']}x{img['height']} (image id {img['id']})")


def _decode(file: str) -> str | None:
    try:
        with Image.open(file) as im:
            im.load()  # the whole file, not only its header: a cut JPEG or PNG fails here
        return None
    except Exception as e:  # PIL raises many types for a bad file
        return f"{file}: cannot be decoded as an image ({type(e).__name__}: {e})"


def decode_image_files(dataset: CocoDataset, workers: int = 0) -> None:
    """Decode every image in full (threads: PIL's decoders release the GIL); the first bad file is one
    InputError naming it. Slower than check_image_files, so the data stage runs it once."""
    files = [dataset.image_path(img) for img in dataset.images]
    with ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 1)) as pool:
        for error in pool.map(_decode, files):
            if error:
                raise InputError(error)


def load_coco(annotations_path: str, image_dir: str, check_files: bool = True) -> CocoDataset:
    """Read and validate a COCO instances json and its image folder; raise InputError on bad input."""
    path = str(annotations_path)
    # first: a wrong --data path is about the json, not the folder beside it
    data = _read_json(path, "annotations file")
    if not os.path.isdir(image_dir):
        raise InputError(f"image folder not found: {image_dir} (for {path})")
    images = _check_images(path, data["images"])
    categories = _check_categories(path, data["categories"])
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    size_of = {img["id"]: (img["width"], img["height"]) for img in images}
    per_image: dict[int, list[tuple[list[float], int, bool, float]]] = {img["id"]: [] for img in images}
    dropped, clipped, first_dropped = 0, 0, ""
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise InputError(f"{where}: expected an object, got {ann!r}")
        iid, cid, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if iid not in size_of:
            raise InputError(f"{where} (id {ann.get('id')}): image_id {iid!r} is not in 'images'")
        if cid not in label_of:
            raise InputError(f"{where} (id {ann.get('id')}): category_id {cid!r} is not in 'categories'")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise InputError(f"{where}.bbox: expected 4 finite numbers [x, y, width, height], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            dropped += 1
            first_dropped = first_dropped or f"annotations[{i}] bbox {bbox}"
            continue
        width, height = size_of[iid]
        box = [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            dropped += 1
            first_dropped = first_dropped or f"annotations[{i}] bbox {bbox} (outside the image)"
            continue
        clipped += box != [x, y, x + w, y + h]
        area = ann.get("area")
        area = float(area) if _is_number(area) and area > 0 else (box[2] - box[0]) * (box[3] - box[1])
        per_image[iid].append((box, label_of[cid], bool(ann.get("iscrowd", 0)), area))

    warnings = []
    if dropped:
        warnings.append(f"{path}: dropped {dropped} boxes with non-positive size, first: {first_dropped}")
    if clipped:
        warnings.append(f"{path}: clipped {clipped} boxes that extend past their image")
    ds = CocoDataset(
        annotations_path=path, image_dir=str(image_dir), images=images, categories=categories,
        boxes={k: np.asarray([a[0] for a in v], np.float32).reshape(-1, 4) for k, v in per_image.items()},
        labels={k: np.asarray([a[1] for a in v], np.int64) for k, v in per_image.items()},
        crowd={k: np.asarray([a[2] for a in v], bool) for k, v in per_image.items()},
        areas={k: np.asarray([a[3] for a in v], np.float32) for k, v in per_image.items()},
        warnings=warnings,
    )
    if check_files:
        check_image_files(ds)
    return ds


def dataset_stats(ds: CocoDataset) -> dict[str, Any]:
    """Counts a person checks a dataset by: images, negatives, boxes per COCO size bucket and per class."""
    areas = np.concatenate([ds.areas[i["id"]] for i in ds.images]) if ds.images else np.zeros(0)
    labels = np.concatenate([ds.labels[i["id"]] for i in ds.images]) if ds.images else np.zeros(0, np.int64)
    return {
        "images": len(ds.images),
        "negatives": sum(1 for i in ds.images if len(ds.labels[i["id"]]) == 0),
        "boxes": int(labels.size),
        "boxes_per_size": {
            "small": int((areas < SMALL_AREA).sum()),
            "medium": int(((areas >= SMALL_AREA) & (areas < MEDIUM_AREA)).sum()),
            "large": int((areas >= MEDIUM_AREA).sum()),
        },
        "boxes_per_class": {name: int((labels == k).sum()) for k, name in enumerate(ds.class_names)},
        "warnings": list(ds.warnings),
    }


def image_dir_beside(annotations_path: str) -> str:
    """COCO layout: images of root/annotations/instances_<split>.json live in root/<split>/."""
    name = os.path.splitext(os.path.basename(annotations_path))[0]
    split = name[len("instances_"):] if name.startswith("instances_") else name
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(annotations_path))), split)
