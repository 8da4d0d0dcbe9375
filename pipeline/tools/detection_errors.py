"""Where a detector's AP goes (a diagnostic, not a test): TIDE's error breakdown (Bolya et al., ECCV 2020,
the `tidecv` package) of stored predictions.json files against the val annotations.

    python -m pipeline.tools.detection_errors runs/ablation/*/predictions.json [--config C | --annotations A] [--json J]

For each file: AP at IoU 0.5, and the AP50 points each error type costs, found by TIDE's oracle fixing
that type alone. Cls: right box (IoU >= 0.5), wrong class. Loc: right class, IoU 0.1 to 0.5. Both:
wrong class and IoU 0.1 to 0.5. Dupe: a second detection of an object already found. Bkg: IoU < 0.1
with every object. Miss: objects no detection explains. FalsePos / FalseNeg: every false positive or
every miss fixed at once. A distillation method can only recover what the error it targets costs.

Beside TIDE, two figures that AP mixes: `found`, the share of objects some detection (of any class)
covers at IoU >= 0.5, and `class right`, the share of those whose highest-scoring covering detection
has the object's class: where the boxes are, and which class the model says they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.coco import CocoDataset, load_coco
from deploy.errors import InputError
from deploy.evaluate import check_results
from deploy.files import write_json
from deploy.tables import markdown_table
from pipeline.cli import guarded
from pipeline.config import load_config

if TYPE_CHECKING:  # torch loads when boxes are compared, not for `edgekd detection-errors --help`
    import torch

ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
COLUMNS = ("AP50", "found", "class right")
SPECIAL = ("FalsePos", "FalseNeg")


def _tidecv():
    try:
        import tidecv
    except ImportError as exc:
        raise InputError("tidecv is not installed: `make setup` installs it with the dev tools "
                         "(or pip install tidecv)") from exc
    return tidecv


def read_results(ds: CocoDataset, path: Path) -> list[dict[str, Any]]:
    """A COCO results file, checked against the dataset as the evaluator checks it."""
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot be read as JSON: {e}") from e
    if not isinstance(results, list):
        raise InputError(f"{path}: expected a list of detections (COCO results format)")
    check_results(ds, results, str(path))
    return results


def tide_ground_truth(name: str, coco: dict[str, Any]):
    """A tidecv Data of a COCO dict's boxes (xywh); crowd boxes are ignore regions, as COCO treats them.
    Built from boxes: tidecv's own COCO reader needs segmentations."""
    gt = _tidecv().Data(name)
    for image in coco["images"]:
        gt.add_image(image["id"], image["file_name"])
    for category in coco["categories"]:
        gt.add_class(category["id"], category["name"])
    for a in coco["annotations"]:
        if a["iscrowd"]:
            gt.add_ignore_region(a["image_id"], a["category_id"], box=a["bbox"])
        else:
            gt.add_ground_truth(a["image_id"], a["category_id"], box=a["bbox"])
    return gt


def tide_detections(name: str, results: list[dict[str, Any]]):
    """A tidecv Data of COCO results (image_id, category_id, bbox xywh, score)."""
    preds = _tidecv().Data(name)
    for d in results:
        preds.add_detection(d["image_id"], d["category_id"], d["score"], box=d["bbox"])
    return preds


def _by_image(items) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item["image_id"], []).append(item)
    return groups


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    import torch
    from torchvision.ops import box_convert

    return box_convert(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")


def class_accuracy(coco: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """In percent: `found`, objects (crowds aside) covered at IoU >= 0.5 by a detection of any class;
    `class right`, the found ones whose highest-scoring covering detection has their class."""
    from torchvision.ops import box_iou

    by_image = _by_image(detections)
    objects = found = right = 0
    for image_id, objs in _by_image(a for a in coco["annotations"] if not a["iscrowd"]).items():
        objects += len(objs)
        dets = by_image.get(image_id, [])
        if not dets:
            continue
        covers = box_iou(_xyxy([a["bbox"] for a in objs]), _xyxy([d["bbox"] for d in dets])) >= 0.5
        for obj, row in zip(objs, covers):
            candidates = [dets[j] for j in row.nonzero().flatten().tolist()]
            if candidates:
                found += 1
                right += max(candidates, key=lambda d: d["score"])["category_id"] == obj["category_id"]
    return {"found": 100.0 * found / max(objects, 1), "class right": 100.0 * right / max(found, 1)}


def breakdown(annotations: Path, paths: list[Path]) -> dict[str, dict[str, float]]:
    """{path: {'AP50', 'found', 'class right', 'Cls', 'Loc', 'Both', 'Dupe', 'Bkg', 'Miss', 'FalsePos',
    'FalseNeg'}}: AP50 and the errors' costs in AP points, found and class right in percent. The ground
    truth is the evaluator's (deploy.coco.load_coco: validated, boxes clipped to their image)."""
    tidecv = _tidecv()
    missing = [p for p in paths if not p.is_file()]
    if missing:  # before minutes of work on the others
        raise InputError(f"predictions file not found: {missing[0]}")
    if not annotations.is_file():  # load_coco would first miss the image folder, which is not needed here
        raise InputError(f"annotations file not found: {annotations}")
    ds = load_coco(str(annotations), str(annotations.parent), check_files=False)
    coco = ds.to_coco_dict()
    gt = tide_ground_truth(str(annotations), coco)
    results: dict[str, dict[str, float]] = {}
    for path in paths:
        detections = read_results(ds, path)
        tide = tidecv.TIDE()
        run = tide.evaluate(gt, tide_detections(str(path), detections), mode=tidecv.TIDE.BOX, name=str(path))
        errors = tide.get_all_errors()
        results[str(path)] = {"AP50": float(run.ap), **class_accuracy(coco, detections),
                              **{k: float(errors["main"][str(path)][k]) for k in ERRORS},
                              **{k: float(errors["special"][str(path)][k]) for k in SPECIAL}}
    return results


def label(path: str) -> str:
    """runs/ablation/kd/predictions.json -> runs/ablation/kd: a stage folder names the model."""
    p = Path(path)
    return str(p.parent) if p.name == "predictions.json" else str(p)


def table(results: dict[str, dict[str, float]]) -> str:
    columns = (*COLUMNS, *ERRORS, *SPECIAL)
    return markdown_table(["predictions", *columns], [[label(path), *(f"{r[c]:.1f}" for c in columns)]
                                                      for path, r in results.items()], numbers_right=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd detection-errors", description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="COCO results files (a stage's predictions.json)")
    parser.add_argument("--config", default="configs/pipelines/default.yaml", help="for the val annotations")
    parser.add_argument("--annotations", type=Path, help="COCO annotation file (default: the config's val split)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        annotations = args.annotations or load_config(args.config).data.split_paths("val")[0]
        results = breakdown(annotations, args.predictions)
        print(f"AP50, found and class right (percent), and the AP50 points each error type costs (TIDE), "
              f"against {annotations}:\n")
        print(table(results))
        if args.json:
            write_json(args.json, {"annotations": str(annotations), "results": results})

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
