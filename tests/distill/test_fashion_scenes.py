import json
from dataclasses import replace

import numpy as np
import pytest
from pycocotools.coco import COCO

from deploy.coco import dataset_stats, load_coco
from distill.data.fashion_mnist import CLASSES, load_fashion_mnist
from distill.data.fashion_scenes import (
    FashionScenesConfig,
    class_profile,
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
            assert ((tiny_scenes / split / img["file_name"]).read_bytes()
                    == (tmp_path / "again" / split / img["file_name"]).read_bytes())
    generate(replace(cfg, seed=1), tmp_path / "other", progress=False)
    assert ((tmp_path / "other" / "train" / "000000.jpg").read_bytes()
            != (tmp_path / "again" / "train" / "000000.jpg").read_bytes())


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
    cfg = FashionScenesConfig(min_objects=12, max_objects=12, min_object_size=80, max_object_size=200,
                              max_occlusion=0.3)
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


def test_the_long_tail_profile_decays_exponentially_from_a_seeded_head_to_a_tail_ratio_times_rarer():
    p = class_profile(50.0, seed=0)
    ranked = np.sort(p)[::-1]
    assert p.sum() == pytest.approx(1.0) and ranked[0] / ranked[-1] == pytest.approx(50.0)
    np.testing.assert_allclose(ranked[:-1] / ranked[1:], 50.0 ** (1 / 9))  # the same step between ranks
    assert np.array_equal(class_profile(50.0, seed=0), p)  # the head is fixed by the seed
    assert not np.array_equal(np.argsort(class_profile(50.0, seed=1)), np.argsort(p))
    np.testing.assert_allclose(class_profile(1.0, seed=0), 0.1)
    with pytest.raises(ValueError, match="long_tail_ratio must be >= 1"):
        class_profile(0.5, seed=0)


@pytest.mark.slow
def test_a_long_tailed_train_split_follows_the_profile_and_leaves_val_as_it_was(tiny_scenes, tmp_path):
    cfg = FashionScenesConfig(size="tiny", num_train=120, num_val=4, workers=2, long_tail_ratio=50.0)
    generate(cfg, tmp_path / "lt", progress=False)
    labels = np.array([a["category_id"] - 1 for a in read(tmp_path / "lt", "train")["annotations"]])
    counts, expected = np.bincount(labels, minlength=10), class_profile(50.0, 0) * len(labels)
    # An object's class is drawn from the profile, then its placement may fail (about 1 in 20, whatever its
    # class), so the counts are binomial around the profile: 5 standard deviations, and 3 objects for the
    # rarest classes (about 5 expected), keep a fair draw from failing.
    sd = np.sqrt(expected * (1 - class_profile(50.0, 0)))
    assert np.all(np.abs(counts - expected) <= 5 * sd + 3), (counts, expected.round(1))
    assert counts[np.argmax(expected)] > 20 * max(counts[np.argmin(expected)], 1) / 2  # head far above tail
    # val is the balanced val (same scenes as the default generator's), and the train split is
    # deterministic: a smaller run gives the same first scenes
    assert read(tmp_path / "lt", "val")["annotations"] == [a for a in read(tiny_scenes, "val")["annotations"]
                                                           if a["image_id"] <= 4]
    generate(replace(cfg, num_train=10, workers=1), tmp_path / "lt10", progress=False)
    assert read(tmp_path / "lt10", "train")["annotations"] == [a for a in read(tmp_path / "lt", "train")["annotations"]
                                                               if a["image_id"] <= 10]
    assert cfg.cache_key() != replace(cfg, long_tail_ratio=1.0).cache_key()


def test_the_balanced_cache_key_is_the_one_written_before_the_long_tail_option():
    # generator.json of the datasets written before the option: their key must still match (no regeneration)
    assert FashionScenesConfig().cache_key() == "095e6cbe2a8369a8"


def test_the_generator_never_replaces_a_folder_it_did_not_write(tmp_path):
    from deploy.errors import InputError

    mine = tmp_path / "my-dataset"
    (mine / "annotations").mkdir(parents=True)
    (mine / "annotations" / "instances_train.json").write_text("{}")
    with pytest.raises(InputError, match=r"my-dataset holds files the fashion-scenes generator did not write"):
        generate(FashionScenesConfig(size="tiny", num_train=2, num_val=2, workers=1), mine, progress=False)
    assert (mine / "annotations" / "instances_train.json").read_text() == "{}"
