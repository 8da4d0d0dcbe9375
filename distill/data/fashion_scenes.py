"""fashion-scenes: the embedded default detection dataset, generated offline and deterministically.

Real object photos (Fashion-MNIST's 10 product classes; its train split for train scenes, its test
split for val scenes, so no object image is shared) are tinted, scaled and alpha-blended by their own
mask onto real photographs shipped with scikit-image (cropped, scaled, flipped, colour-jittered).
A box is exactly the visible part of its object (alpha >= 0.5, minus what later objects cover), and
a placement that would hide an earlier object beyond `max_occlusion` is tried elsewhere or skipped.
The output is a COCO dataset: <root>/{train,val}/*.jpg and <root>/annotations/instances_{split}.json.
Every scene draws from its own RNG seeded by (seed, split, index), so the output does not depend on
the number of worker processes.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from deploy.errors import InputError
from deploy.files import write_json
from distill.data.fashion_mnist import CLASSES, SUPERCATEGORIES, load_fashion_mnist

GENERATOR_VERSION = 1  # bump when the output for the same parameters changes
PRESETS = {"tiny": (48, 24), "default": (3000, 500)}  # (train, val) scenes
SPLITS = {"train": ("train", 0), "val": ("test", 1)}  # scene split -> (Fashion-MNIST split, seed code)
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)  # scene width / height
# scikit-image's bundled photographs (no download); synthetic or binary ones are left out.
BACKGROUNDS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)
MASK_THRESHOLD = 8  # Fashion-MNIST pixel value above which a pixel belongs to the object


@dataclass
class FashionScenesConfig:
    size: Literal["tiny", "default"] = "default"  # tiny: 48/24 scenes (tests); default: 3000/500
    num_train: int = 0  # scenes in train; 0 takes the size preset
    num_val: int = 0  # scenes in val; 0 takes the size preset
    image_size: int = 320  # longer side of every scene, pixels
    min_objects: int = 1
    max_objects: int = 12
    min_object_size: int = 16  # longer side of an object, pixels; drawn log-uniformly in [min, max]
    max_object_size: int = 288
    max_occlusion: float = 0.5  # largest fraction of an object that later objects may hide
    jpeg_quality: int = 90
    seed: int = 0
    # > 1: a long-tailed train split, object class frequencies decaying exponentially from the head class
    # to the tail class by this ratio (which class is which: fixed by the seed); val stays balanced.
    long_tail_ratio: float = 1.0
    workers: int = 0  # processes; 0 = one per core (the output does not depend on it)
    fashion_mnist_dir: str | None = None  # folder with the four idx .gz files; None: Debian's, else download

    def counts(self) -> dict[str, int]:
        train, val = PRESETS[self.size]
        return {"train": self.num_train or train, "val": self.num_val or val}

    def cache_key(self) -> str:
        """Hash of everything that changes the output (not workers, not where Fashion-MNIST lives)."""
        params = {k: v for k, v in asdict(self).items() if k not in ("workers", "fashion_mnist_dir", "size")}
        if self.long_tail_ratio == 1.0:  # balanced: the key (and the data) of the datasets written before it
            del params["long_tail_ratio"]
        params.update(counts=self.counts(), version=GENERATOR_VERSION)
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def class_profile(ratio: float, seed: int, num_classes: int = len(CLASSES)) -> np.ndarray:
    """Each class's probability of being drawn for an object [num_classes]: the classes ranked head to tail
    by a permutation fixed by the seed, the rank-r class drawn with probability proportional to
    ratio^(-r / (num_classes - 1)), so the head class is `ratio` times as frequent as the tail class."""
    if ratio < 1:
        raise ValueError(f"long_tail_ratio must be >= 1, got {ratio}")
    rank = np.empty(num_classes, np.int64)
    rank[np.random.default_rng([seed, 7]).permutation(num_classes)] = np.arange(num_classes)
    weights = float(ratio) ** (-rank / max(num_classes - 1, 1))
    return weights / weights.sum()


def load_backgrounds(max_side: int = 800) -> list[np.ndarray]:
    """scikit-image's photographs as HWC uint8 RGB, downscaled to at most max_side."""
    import skimage.data

    photos = []
    for name in BACKGROUNDS:
        img = np.asarray(getattr(skimage.data, name)())
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        scale = max_side / max(img.shape[:2])
        if scale < 1:
            size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
            img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        photos.append(np.ascontiguousarray(img, dtype=np.uint8))
    return photos


def _background(rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    aspect = width / height
    max_w = min(pw, ph * aspect)
    cw = max(8.0, max_w * rng.uniform(0.35, 1.0))
    ch = cw / aspect
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    crop = Image.fromarray(photo).resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    img = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.6, 1.2) + mean  # contrast
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * rng.uniform(0.5, 1.3)  # saturation
    img = img * rng.uniform(0.7, 1.2) * rng.uniform(0.9, 1.1, size=3)  # brightness, colour cast
    return np.clip(img, 0, 255)


def _object(rng: np.random.Generator, grey28: np.ndarray, cfg: FashionScenesConfig, max_side: int):
    """A tinted object: colour [h, w, 3] float, alpha [h, w] in [0, 1]."""
    from scipy import ndimage  # here: reading the generator's settings (a config) should not load scipy

    mask28 = ndimage.binary_fill_holes(grey28 > MASK_THRESHOLD)
    ys, xs = np.nonzero(mask28)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    grey, mask = grey28[y0:y1, x0:x1].astype(np.float32), mask28[y0:y1, x0:x1].astype(np.float32)
    size = np.exp(rng.uniform(np.log(cfg.min_object_size), np.log(cfg.max_object_size)))
    stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    h, w = (y1 - y0) * stretch, (x1 - x0) / stretch
    scale = min(size, max_side) / max(h, w)
    out_w, out_h = max(2, round(w * scale)), max(2, round(h * scale))
    grey = np.asarray(Image.fromarray(grey, mode="F").resize((out_w, out_h), Image.BILINEAR))
    alpha = np.clip(np.asarray(Image.fromarray(mask, mode="F").resize((out_w, out_h), Image.BILINEAR)), 0, 1)
    if rng.random() < 0.5:
        grey, alpha = grey[:, ::-1], alpha[:, ::-1]
    tint = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.15, 0.9), rng.uniform(0.45, 1.0)))
    shade = 0.3 + 0.7 * np.clip(grey / max(float(grey.max()), 1.0), 0, 1)
    return 255.0 * shade[..., None] * tint[None, None, :], alpha


def make_scene(index: int, split: str, cfg: FashionScenesConfig, images: np.ndarray, labels: np.ndarray,
               photos: list[np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """One scene: HWC uint8 RGB image and its annotations (bbox xywh pixels, visible-mask area, class index)."""
    rng = np.random.default_rng([cfg.seed, SPLITS[split][1], index])
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    width = cfg.image_size if aspect >= 1 else round(cfg.image_size * aspect)
    height = round(cfg.image_size / aspect) if aspect >= 1 else cfg.image_size
    canvas = _background(rng, photos, width, height)
    owner = np.full((height, width), -1, np.int32)  # which object is visible at each pixel
    full_area: list[int] = []  # visible pixels of each object when placed
    visible: list[int] = []  # visible pixels of each object now
    classes: list[int] = []
    long_tail = split == "train" and cfg.long_tail_ratio != 1.0
    if long_tail:
        profile = class_profile(cfg.long_tail_ratio, cfg.seed)
        by_class = [np.flatnonzero(labels == c) for c in range(len(profile))]
    for _ in range(rng.integers(cfg.min_objects, cfg.max_objects + 1)):
        if long_tail:  # the class first, then one of its images
            members = by_class[rng.choice(len(profile), p=profile)]
            k = members[rng.integers(len(members))]
        else:
            k = rng.integers(len(images))
        color, alpha = _object(rng, images[k], cfg, max_side=int(0.9 * min(width, height)))
        solid = alpha >= 0.5
        oh, ow = alpha.shape
        if solid.sum() < 4:
            continue
        for _attempt in range(20):
            x0, y0 = rng.integers(0, width - ow + 1), rng.integers(0, height - oh + 1)
            covered = owner[y0 : y0 + oh, x0 : x0 + ow][solid]
            hidden = np.bincount(covered[covered >= 0], minlength=len(visible))
            left = np.asarray(visible) - hidden
            if np.all(left >= (1 - cfg.max_occlusion) * np.asarray(full_area)):
                break
        else:
            continue  # nowhere to put it without hiding another object too much
        region = canvas[y0 : y0 + oh, x0 : x0 + ow]
        region[:] = alpha[..., None] * color + (1 - alpha[..., None]) * region
        owner[y0 : y0 + oh, x0 : x0 + ow][solid] = len(visible)
        visible = list(left) + [int(solid.sum())]
        full_area.append(int(solid.sum()))
        classes.append(int(labels[k]))
    anns = []
    for j, label in enumerate(classes):
        ys, xs = np.nonzero(owner == j)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        anns.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(ys.size), "label": label,
                     "visible_fraction": round(ys.size / full_area[j], 4)})
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), anns


_STATE: dict = {}  # set in the parent before the workers fork, so the arrays are shared, not pickled


def _scene_job(index: int, split: str, out_dir: str) -> tuple[int, int, int, list[dict]]:
    s = _STATE
    image, anns = make_scene(index, split, s["cfg"], s["images"][split], s["labels"][split], s["photos"])
    Image.fromarray(image).save(os.path.join(out_dir, f"{index:06d}.jpg"), quality=s["cfg"].jpeg_quality)
    return index, image.shape[1], image.shape[0], anns


def _write_split(split: str, n: int, root: Path, workers: int, progress: bool) -> None:
    out_dir = root / split
    out_dir.mkdir(parents=True)
    job = partial(_scene_job, split=split, out_dir=str(out_dir))
    bar = dict(total=n, desc=f"fashion-scenes {split}", unit="img", disable=not progress)
    if workers > 1:
        # Forked workers inherit the pipeline's SIGTERM-as-Ctrl-C handler, and the pool's exit terminates them
        # with SIGTERM: each printed a KeyboardInterrupt traceback. They take the default action, and the
        # pool is closed and joined (a clean exit) once every scene is back.
        with mp.get_context("fork").Pool(workers, initializer=signal.signal,
                                         initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
            rows = list(tqdm(pool.imap(job, range(n), chunksize=8), **bar))
            pool.close()
            pool.join()
    else:
        rows = [job(i) for i in tqdm(range(n), **bar)]
    images, annotations = [], []
    for index, width, height, anns in rows:
        images.append({"id": index + 1, "file_name": f"{index:06d}.jpg", "width": width, "height": height})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": a["label"] + 1,
                                "bbox": a["bbox"], "area": a["area"], "iscrowd": 0,
                                "visible_fraction": a["visible_fraction"]})
    categories = [{"id": k + 1, "name": name, "supercategory": sup}
                  for k, (name, sup) in enumerate(zip(CLASSES, SUPERCATEGORIES))]
    coco = {"info": {"description": f"fashion-scenes {split}", "version": GENERATOR_VERSION},
            "images": images, "annotations": annotations, "categories": categories}
    write_json(root / "annotations" / f"instances_{split}.json", coco, indent=None)


def is_current(cfg: FashionScenesConfig, root: str | os.PathLike) -> bool:
    """True when root holds a complete dataset generated with these parameters."""
    marker = Path(root) / "generator.json"
    try:
        return json.loads(marker.read_text())["cache_key"] == cfg.cache_key()
    except (OSError, ValueError, KeyError):
        return False


def generate(cfg: FashionScenesConfig, root: str | os.PathLike, progress: bool = True) -> float:
    """Write the dataset to root (built in a temporary folder, swapped in whole); return seconds taken."""
    start = time.perf_counter()
    root = Path(root)
    # e.g. a generator setting on a user's dataset
    if root.is_dir() and any(root.iterdir()) and not (root / "generator.json").is_file():
        raise InputError(f"data.root: {root} holds files the fashion-scenes generator did not write; it will not "
                         "replace them (set data.generator=null for a dataset of your own, or another data.root)")
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    photos = load_backgrounds()
    images, labels = {}, {}
    for split, (fm_split, _) in SPLITS.items():
        images[split], labels[split] = load_fashion_mnist(fm_split, cfg.fashion_mnist_dir)
    _STATE.update(cfg=cfg, images=images, labels=labels, photos=photos)
    workers = cfg.workers or os.cpu_count() or 1
    try:
        for split, n in cfg.counts().items():
            _write_split(split, n, tmp, workers, progress)
        seconds = time.perf_counter() - start
        write_json(tmp / "generator.json", {"cache_key": cfg.cache_key(), "params": asdict(cfg),
                                            "counts": cfg.counts(), "seconds": round(seconds, 1)})
        if root.exists():
            old = root.parent / f".{root.name}.tmp-old-{os.getpid()}"
            root.rename(old)
            shutil.rmtree(old)
        tmp.rename(root)
    finally:
        _STATE.clear()
        shutil.rmtree(tmp, ignore_errors=True)
    return seconds
