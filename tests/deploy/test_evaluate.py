import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deploy.coco import load_coco
from deploy.evaluate import coco_eval, main, to_coco_results
from deploy.preprocess import letterbox, unletterbox_boxes
from tests.conftest import write_coco

# Non-contiguous category ids, as in COCO itself (ids 1..90 for 80 classes).
CATEGORIES = [{"id": 42, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}]
IMAGES = [{"id": 11, "file_name": "a.jpg", "width": 320, "height": 200},
          {"id": 5, "file_name": "b.jpg", "width": 150, "height": 300},
          {"id": 8, "file_name": "c.jpg", "width": 100, "height": 100}]  # no annotations: a negative
ANNOTATIONS = [
    {"id": 1, "image_id": 11, "category_id": 3, "bbox": [10, 20, 50, 40], "area": 2000, "iscrowd": 0},
    {"id": 2, "image_id": 11, "category_id": 42, "bbox": [100, 50, 120, 100], "area": 12000, "iscrowd": 0},
    {"id": 3, "image_id": 5, "category_id": 7, "bbox": [5, 5, 20, 30], "area": 600, "iscrowd": 0},
    {"id": 4, "image_id": 5, "category_id": 3, "bbox": [30, 100, 100, 150], "area": 15000, "iscrowd": 0},
]


@pytest.fixture
def dataset(tmp_path):
    path = write_coco(tmp_path, IMAGES, ANNOTATIONS, CATEGORIES)
    return load_coco(str(path), str(tmp_path / "val"))


def perfect_results(ds):
    results = []
    for img in ds.images:
        iid = img["id"]
        n = len(ds.labels[iid])
        results += to_coco_results(iid, ds.boxes[iid], np.linspace(0.9, 0.5, n), ds.labels[iid], ds.cat_ids)
    return results


def test_labels_are_contiguous_in_id_order_and_map_back(dataset):
    assert dataset.cat_ids == [3, 7, 42] and dataset.class_names == ["car", "dog", "zebra"]
    assert dataset.labels[11].tolist() == [0, 2]
    results = to_coco_results(11, dataset.boxes[11], np.array([0.9, 0.8]), dataset.labels[11], dataset.cat_ids)
    assert [r["category_id"] for r in results] == [3, 42]
    assert results[0]["bbox"] == [10, 20, 50, 40]  # xyxy back to xywh


def test_perfect_predictions_give_ap_one(dataset):
    metrics = coco_eval(dataset, perfect_results(dataset))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in metrics["per_class_AP"].values())


def test_perfect_predictions_through_letterbox_give_ap_one(dataset):
    """Boxes mapped into a 256x256 letterboxed input and back (what every runtime does) still score 1.0."""
    results = []
    for img in dataset.images:
        iid = img["id"]
        _, lb = letterbox(np.zeros((img["height"], img["width"], 3), np.uint8), (256, 256))
        in_input = dataset.boxes[iid] * lb.scale + np.array([lb.pad_x, lb.pad_y] * 2, np.float32)
        boxes = unletterbox_boxes(in_input, lb)
        results += to_coco_results(iid, boxes, np.full(len(boxes), 0.9), dataset.labels[iid], dataset.cat_ids)
    assert coco_eval(dataset, results)["AP"] == pytest.approx(1.0)


def test_empty_predictions_give_ap_zero(dataset):
    metrics = coco_eval(dataset, [])
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["num_detections"] == 0


def one_box_dataset(tmp_path, boxes):
    images = [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 400}]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, b in enumerate(boxes)]
    path = write_coco(tmp_path, images, anns, [{"id": 1, "name": "thing"}])
    return load_coco(str(path), str(tmp_path / "val"))


def det(box, score):
    return {"image_id": 1, "category_id": 1, "bbox": box, "score": score}


def test_hand_computed_partial_case(tmp_path):
    ds = one_box_dataset(tmp_path, [[0, 0, 100, 100], [200, 200, 50, 50]])
    # A false positive ranked above the one true positive: precision 1/2 at recall 1/2, nothing beyond.
    # COCO's 101-point interpolation: recall points 0.00..0.50 (51 of them) have precision 0.5.
    metrics = coco_eval(ds, [det([300, 0, 50, 50], 0.9), det([0, 0, 100, 100], 0.8)])
    assert metrics["AP"] == pytest.approx(0.5 * 51 / 101)
    assert metrics["AP50"] == pytest.approx(0.5 * 51 / 101)


def test_hand_computed_iou_thresholds(tmp_path):
    ds = one_box_dataset(tmp_path, [[0, 0, 100, 100]])
    # IoU 0.62: a true positive at thresholds 0.50, 0.55, 0.60 only -> AP = 3/10, AP50 = 1, AP75 = 0.
    metrics = coco_eval(ds, [det([0, 0, 100, 62], 0.9)])
    assert metrics["AP"] == pytest.approx(0.3)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)


def test_per_class_ap_and_size_buckets(dataset):
    # Everything right except the zebra (large, id 42), which is missed entirely.
    results = [r for r in perfect_results(dataset) if r["category_id"] != 42]
    metrics = coco_eval(dataset, results)
    assert metrics["per_class_AP"] == {"car": pytest.approx(1.0), "dog": pytest.approx(1.0), "zebra": 0.0}
    assert metrics["AP"] == pytest.approx(2 / 3)
    assert metrics["APs"] == pytest.approx(1.0)  # the only small box (the dog, area 600) is found


def test_matches_pycocotools_own_loadres_path(dataset):
    rng = np.random.default_rng(0)
    results = []
    for r in perfect_results(dataset):
        x, y, w, h = r["bbox"]
        results.append({**r, "bbox": [x + rng.normal(0, 3), y + rng.normal(0, 3), w, h], "score": float(rng.random())})
    results.append({"image_id": 8, "category_id": 7, "bbox": [0, 0, 10, 10], "score": 0.99})  # on the negative
    ours = coco_eval(dataset, results)
    gt = COCO()
    gt.dataset = dataset.to_coco_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours["AP"] == pytest.approx(ev.stats[0]) and ours["AP75"] == pytest.approx(ev.stats[2])
    assert 0 < ours["AP"] < 1


def test_cli_writes_metrics_and_rejects_unknown_category(tmp_path, dataset, capsys):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(perfect_results(dataset)))
    out = tmp_path / "out"
    assert main(["--annotations", dataset.annotations_path, "--predictions", str(preds), "--out", str(out)]) == 0
    # deploy/metrics_file.py's layout, the artifact named by --name (a training stage's checkpoint by default)
    assert json.loads((out / "metrics.json").read_text())["artifacts"]["pytorch"]["AP"] == pytest.approx(1.0)
    assert main(["--annotations", dataset.annotations_path, "--predictions", str(preds), "--out", str(out),
                 "--name", "openvino_int8"]) == 0
    assert list(json.loads((out / "metrics.json").read_text())["artifacts"]) == ["openvino_int8"]
    assert len(json.loads((out / "predictions.json").read_text())) == 4
    preds.write_text(json.dumps([det([0, 0, 5, 5], 0.5) | {"image_id": 11, "category_id": 99}]))
    assert main(["--annotations", dataset.annotations_path, "--predictions", str(preds)]) == 2
    assert "category_id: 99 is not a category" in capsys.readouterr().err
