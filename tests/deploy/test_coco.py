import json

import numpy as np
import pytest

from deploy.coco import dataset_stats, image_dir_beside, load_coco
from deploy.errors import InputError
from tests.conftest import write_coco

CATS = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]
IMAGES = [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48},
          {"id": 2, "file_name": "y.jpg", "width": 32, "height": 32}]


def ann(i, image_id=1, category_id=1, bbox=(1, 2, 10, 20), **kw):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), **kw}


def load(tmp_path, images=IMAGES, anns=(), cats=CATS, **kw):
    path = write_coco(tmp_path, images, list(anns), cats, **kw)
    return load_coco(str(path), str(tmp_path / "val"))


def test_loads_boxes_as_xyxy_and_keeps_negatives(tmp_path):
    ds = load(tmp_path, anns=[ann(1), ann(2, category_id=5, bbox=(0, 0, 64, 48))])
    np.testing.assert_allclose(ds.boxes[1], [[1, 2, 11, 22], [0, 0, 64, 48]])
    assert ds.labels[1].tolist() == [0, 1]
    assert ds.labels[2].tolist() == [] and ds.boxes[2].shape == (0, 4)
    stats = dataset_stats(ds)
    assert stats["images"] == 2 and stats["negatives"] == 1 and stats["boxes"] == 2
    assert stats["boxes_per_class"] == {"a": 1, "b": 1}


def test_non_positive_boxes_are_dropped_counted_and_reported(tmp_path):
    ds = load(tmp_path, anns=[ann(1), ann(2, bbox=(5, 5, 0, 10)), ann(3, bbox=(5, 5, 10, -1))])
    assert len(ds.labels[1]) == 1
    assert ds.warnings and "dropped 2 boxes with non-positive size" in ds.warnings[0]


def test_boxes_past_the_image_are_clipped(tmp_path):
    ds = load(tmp_path, anns=[ann(1, bbox=(50, 40, 30, 30))])
    np.testing.assert_allclose(ds.boxes[1], [[50, 40, 64, 48]])
    assert "clipped 1 boxes" in ds.warnings[0]


@pytest.mark.parametrize("anns, message", [
    ([ann(1, image_id=99)], "annotations[0] (id 1): image_id 99 is not in 'images'"),
    ([ann(1, category_id=2)], "annotations[0] (id 1): category_id 2 is not in 'categories'"),
    ([ann(1, bbox=(1, 2, 3))], "annotations[0].bbox: expected 4 finite numbers"),
])
def test_bad_annotations_name_the_file_and_field(tmp_path, anns, message):
    with pytest.raises(InputError) as e:
        load(tmp_path, anns=anns)
    assert message in str(e.value) and "instances_val.json" in str(e.value)


def test_schema_errors(tmp_path):
    with pytest.raises(InputError, match=r"images\[0\]\.width: expected a positive integer"):
        load(tmp_path, images=[{"id": 1, "file_name": "x.jpg", "width": 0, "height": 4}], write_images=False)
    with pytest.raises(InputError, match="duplicate category id 1"):
        load(tmp_path, cats=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(InputError, match="'annotations' must be a list"):
        load_coco(str(path), str(tmp_path / "val"))


def test_malformed_json(tmp_path):
    load(tmp_path)
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text('{"images": [,]}')
    with pytest.raises(InputError, match=r"instances_val.json: not valid JSON \(line 1, column 13"):
        load_coco(str(path), str(tmp_path / "val"))


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(InputError, match="annotations file not found: .*nope.json"):
        load_coco(str(tmp_path / "nope.json"), str(tmp_path))
    # both missing: the json is named first (deploy/benchmark.py --data names the json, not a folder)
    with pytest.raises(InputError, match="annotations file not found: .*nope.json"):
        load_coco(str(tmp_path / "nope.json"), str(tmp_path / "missing"))
    path = write_coco(tmp_path, IMAGES, [], CATS)
    with pytest.raises(InputError, match="image folder not found: .*missing"):
        load_coco(str(path), str(tmp_path / "missing"))
    (tmp_path / "val" / "y.jpg").unlink()
    with pytest.raises(InputError, match=r"1 of 2 images are missing .*first: y.jpg \(image id 2\)"):
        load_coco(str(path), str(tmp_path / "val"))


def test_unreadable_and_wrong_size_images(tmp_path):
    path = write_coco(tmp_path, IMAGES, [], CATS)
    (tmp_path / "val" / "y.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="y.jpg: cannot be read as an image"):
        load_coco(str(path), str(tmp_path / "val"))
    path = write_coco(tmp_path, [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48}], [], CATS)
    path.write_text(path.read_text().replace('"width": 64', '"width": 65'))
    with pytest.raises(InputError, match="x.jpg: is 64x48 pixels but .* says 65x48"):
        load_coco(str(path), str(tmp_path / "val"))


def test_image_dir_beside_follows_coco_layout():
    assert image_dir_beside("/d/coco/annotations/instances_val2017.json") == "/d/coco/val2017"


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_truncated_image_is_named_by_the_full_decode(tmp_path, suffix):
    from PIL import Image

    from deploy.coco import decode_image_files

    root = tmp_path / "d"
    (root / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    name = f"a{suffix}"
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "val" / name)
    data = (root / "val" / name).read_bytes()
    (root / "val" / name).write_bytes(data[: len(data) // 3])  # cut to a third: the header still reads
    images = [{"id": 1, "file_name": name, "width": 80, "height": 64}]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": [],
                                               "categories": [{"id": 1, "name": "x"}]}))
    ds = load_coco(str(root / "ann.json"), str(root / "val"))  # the header check passes: it is not enough
    with pytest.raises(InputError, match=rf"{name}: cannot be decoded as an image"):
        decode_image_files(ds)
