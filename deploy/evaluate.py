"""COCO bbox evaluation with pycocotools: detections -> COCO results -> AP, AP50, AP75, APs/m/l, per class.

    python -m deploy.evaluate --annotations data/fashion-scenes/annotations/instances_val.json \
        --predictions runs/default/distill/predictions.json --out /tmp/eval

AP values are fractions in [0, 1] (pycocotools' own scale); tables show them x100. A size bucket
without ground truth gives None (pycocotools' -1).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deploy import metrics_file
from deploy.coco import CocoDataset, load_coco
from deploy.errors import InputError
from deploy.files import write_json

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, cat_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """One image's detections (xyxy original pixels, probabilities, contiguous labels) -> COCO results
    entries (xywh, original category ids), rounded as they are written to predictions.json."""
    out = []
    for (x1, y1, x2, y2), s, k in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        out.append({
            "image_id": int(image_id), "category_id": int(cat_ids[k]),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(s, 5),
        })
    return out


def _gt_coco(ds: CocoDataset) -> COCO:
    gt = COCO()
    gt.dataset = ds.to_coco_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _results_coco(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    # What COCO.loadRes does for boxes, minus its crash on an empty list and its prints.
    anns = []
    for i, r in enumerate(results):
        x, y, w, h = r["bbox"]
        anns.append({**r, "id": i + 1, "area": w * h, "iscrowd": 0})
    dt = COCO()
    dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def check_results(ds: CocoDataset, results: list[dict[str, Any]], source: str = "predictions") -> None:
    """Results must name images and categories of the dataset, with a 4-number bbox and a score."""
    image_ids, cat_ids = {i["id"] for i in ds.images}, set(ds.cat_ids)
    for i, r in enumerate(results):
        where = f"{source}: [{i}]"
        if not isinstance(r, dict):
            raise InputError(f"{where}: expected an object, got {r!r}")
        if r.get("image_id") not in image_ids:
            raise InputError(f"{where}.image_id: {r.get('image_id')!r} is not an image of {ds.annotations_path}")
        if r.get("category_id") not in cat_ids:
            raise InputError(f"{where}.category_id: {r.get('category_id')!r} "
                             f"is not a category of {ds.annotations_path}")
        bbox = r.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise InputError(f"{where}.bbox: expected [x, y, width, height], got {bbox!r}")
        if not isinstance(r.get("score"), (int, float)):
            raise InputError(f"{where}.score: expected a number, got {r.get('score')!r}")


def coco_eval(ds: CocoDataset, results: list[dict[str, Any]]) -> dict[str, Any]:
    """COCOeval (bbox) over every image of the dataset; an empty result list gives AP 0."""
    gt = _gt_coco(ds)
    ev = COCOeval(gt, _results_coco(gt, results), iouType="bbox")
    ev.params.imgIds = [i["id"] for i in ds.images]
    with contextlib.redirect_stdout(io.StringIO()) as log:
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    def value(v: float) -> float | None:
        return None if v < 0 else float(v)

    metrics: dict[str, Any] = {name: value(v) for name, v in zip(STAT_NAMES, ev.stats)}
    per_class = {}
    precision = ev.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]
    for k, cat in enumerate(ds.categories):
        p = precision[:, :, k, 0, -1]
        per_class[cat["name"]] = float(p[p > -1].mean()) if (p > -1).any() else None
    metrics["per_class_AP"] = per_class
    metrics["num_images"] = len(ds.images)
    metrics["num_detections"] = len(results)
    metrics["summary"] = log.getvalue().strip().splitlines()
    return metrics


def write_evaluation(out_dir: str, metrics: dict[str, Any], results: list[dict[str, Any]],
                     name: str = metrics_file.CHECKPOINT) -> None:
    """Write predictions.json (the detections) and metrics.json (what they scored, as the artifact `name`:
    deploy/metrics_file.py's layout) atomically."""
    write_json(os.path.join(out_dir, "predictions.json"), results, indent=None)
    metrics_file.write(out_dir, {name: metrics})


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line of the headline figures, in percent."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    return "  ".join(f"{k} {pct(metrics.get(k))}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", required=True, help="COCO instances json (ground truth)")
    parser.add_argument("--predictions", required=True, help="COCO results json (a list of detections)")
    parser.add_argument("--out", help="folder to write metrics.json and predictions.json into")
    parser.add_argument("--name", default=metrics_file.CHECKPOINT,
                        help="the artifact's name in metrics.json (default: pytorch, a training stage's checkpoint)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        ds = load_coco(args.annotations, os.path.dirname(os.path.abspath(args.annotations)), check_files=False)
        try:
            with open(args.predictions, encoding="utf-8") as f:
                results = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{args.predictions}: cannot be read as JSON: {e}") from e
        if not isinstance(results, list):
            raise InputError(f"{args.predictions}: expected a list of detections (COCO results format)")
        check_results(ds, results, args.predictions)
        metrics = coco_eval(ds, results)
    except InputError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_metrics(metrics))
    if args.out:
        write_evaluation(args.out, metrics, results, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
