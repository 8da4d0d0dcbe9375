import json
from dataclasses import replace

import numpy as np
import pytest
from pycocotools.coco import COCO

from deploy.coco import dataset_stats, load_coco
from distill.data.fashion_mnist import CLASSES, load_fashion_mnist
from distill.data.fashion_scenes import (
    FashionScenesConfig,
    generate,
    is_current,
    load_backgrounds,
    make_scene,
)


def read(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_same_seed_gives_the_same_bytes_whatever_the_workers(tiny_scenes, tmp_path):
    cfg = FashionScenesConfig(size="tiny", num_train=10, num_val=4, workers=2)
    generate(cfg, tmp_path / "again", progress=False)
    for split in ("train", "val"):
        a, b = read(tiny_scenes, split), read(tmp_path / "again", split)
        ids = {img["id"] for img in b["images"]}
        assert [x for x in a["annotations"] if x["image_id"] in ids] == b["annotations"]
        for img in b["images"]:
            assert (tiny_scenes / split / img["file_name"]).read_bytes() == (tmp_path / "again" / split / img["file_name"]).read_bytes()
    generate(replace(cfg, seed=1), tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "train" / "000000.jpg").read_bytes() != (tmp_path / "again" / "train" / "000000.jpg").read_bytes()


def test_boxes_inside_images_and_every_class_present(tiny_scenes):
    for split in ("train", "val"):
        data = read(tiny_scenes, split)
        size = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
        assert len(data["images"]) == {"train": 48, "val": 24}[split]
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            width, height = size[a["image_id"]]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height
            assert 0 < a["area"] <= w * h
        assert {a["category_id"] for a in data["annotations"]} == set(range(1, 11))
        counts = [sum(1 for a in data["annotations"] if a["image_id"] == img["id"]) for img in data["images"]]
        assert min(counts) >= 1 and max(counts) <= 12


def test_valid_for_pycocotools_and_our_loader(tiny_scenes):
    for split in ("train", "val"):
        path = tiny_scenes / "annotations" / f"instances_{split}.json"
        coco = COCO(str(path))
        assert len(coco.getCatIds()) == 10 and len(coco.getImgIds()) == len(coco.imgs)
        ds = load_coco(str(path), str(tiny_scenes / split))  # opens every image
        assert ds.class_names == list(CLASSES) and not ds.warnings
        stats = dataset_stats(ds)
        assert all(stats["boxes_per_size"][k] > 0 for k in ("small", "medium", "large"))


@pytest.mark.usefixtures("fashion_mnist_available")
def test_occlusion_rule_holds_in_crowded_scenes():
    images, labels = load_fashion_mnist("test")
    photos = load_backgrounds()
    cfg = FashionScenesConfig(min_objects=12, max_objects=12, min_object_size=80, max_object_size=200, max_occlusion=0.3)
    fractions = []
    for index in range(10):
        image, anns = make_scene(index, "val", cfg, images, labels, photos)
        assert image.dtype == np.uint8 and max(image.shape[:2]) == cfg.image_size
        fractions += [a["visible_fraction"] for a in anns]
        boxes = [a["bbox"] for a in anns]
        assert all(a["area"] <= b[2] * b[3] for a, b in zip(anns, boxes))
    assert min(fractions) >= 0.7  # never hidden beyond max_occlusion
    assert min(fractions) < 1.0  # partial occlusion does happen
    assert len(fractions) < 120  # placements that would break the rule are skipped


def test_cache_key_follows_the_parameters(tiny_scenes):
    cfg = FashionScenesConfig(size="tiny", workers=1)
    assert is_current(cfg, tiny_scenes)
    assert is_current(replace(cfg, workers=4), tiny_scenes)  # workers do not change the output
    assert not is_current(replace(cfg, seed=1), tiny_scenes)
    assert not is_current(replace(cfg, num_val=5), tiny_scenes)
