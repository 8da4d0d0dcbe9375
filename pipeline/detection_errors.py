"""Where a detector's AP goes (a diagnostic, not a test): TIDE's error breakdown (Bolya et al., ECCV 2020,
the `tidecv` package) of stored predictions.json files against the val annotations.

    python -m pipeline.detection_errors runs/ablation/*/predictions.json [--config C | --annotations A] [--json J]

For each file: AP at IoU 0.5, and the AP50 points each error type costs, found by TIDE's oracle fixing
that type alone. Cls: right box (IoU >= 0.5), wrong class. Loc: right class, IoU 0.1 to 0.5. Both:
wrong class and IoU 0.1 to 0.5. Dupe: a second detection of an object already found. Bkg: IoU < 0.1
with every object. Miss: objects no detection explains. FalsePos / FalseNeg: every false positive or
every miss fixed at once. A distillation method can only recover what the error it targets costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deploy.errors import InputError
from deploy.files import write_json
from pipeline.cli import guarded
from pipeline.config import load_config

ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL = ("FalsePos", "FalseNeg")


def _tidecv():
    try:
        import tidecv
    except ImportError:
        raise InputError("tidecv is not installed: `make setup` installs it with the dev tools "
                         "(or pip install tidecv)") from None
    return tidecv


def _read(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e})") from None


def ground_truth(annotations: Path):
    """A tidecv Data of the COCO annotation file's boxes (xywh); crowd boxes are ignore regions, as COCO
    treats them. Built from the boxes alone: tidecv's own COCO reader needs segmentations."""
    tidecv = _tidecv()
    coco = _read(annotations, "annotation file")
    gt = tidecv.Data(str(annotations))
    for image in coco["images"]:
        gt.add_image(image["id"], image.get("file_name", str(image["id"])))
    for category in coco["categories"]:
        gt.add_class(category["id"], category["name"])
    for a in coco["annotations"]:
        if a.get("iscrowd"):
            gt.add_ignore_region(a["image_id"], a["category_id"], box=a["bbox"])
        else:
            gt.add_ground_truth(a["image_id"], a["category_id"], box=a["bbox"])
    return gt


def predictions(path: Path):
    """A tidecv Data of a COCO results file (image_id, category_id, bbox xywh, score)."""
    tidecv = _tidecv()
    preds = tidecv.Data(str(path))
    for d in _read(path, "predictions file"):
        preds.add_detection(d["image_id"], d["category_id"], d["score"], box=d["bbox"])
    return preds


def breakdown(annotations: Path, paths: list[Path]) -> dict[str, dict[str, float]]:
    """{path: {'AP50', 'Cls', 'Loc', 'Both', 'Dupe', 'Bkg', 'Miss', 'FalsePos', 'FalseNeg'}} in AP points."""
    tidecv = _tidecv()
    missing = [p for p in paths if not p.is_file()]
    if missing:  # before minutes of work on the others
        raise InputError(f"predictions file not found: {missing[0]}")
    gt = ground_truth(annotations)
    results: dict[str, dict[str, float]] = {}
    for path in paths:
        tide = tidecv.TIDE()
        run = tide.evaluate(gt, predictions(path), mode=tidecv.TIDE.BOX, name=str(path))
        errors = tide.get_all_errors()
        results[str(path)] = {"AP50": float(run.ap), **{k: float(errors["main"][str(path)][k]) for k in ERRORS},
                              **{k: float(errors["special"][str(path)][k]) for k in SPECIAL}}
    return results


def label(path: str) -> str:
    """runs/ablation/kd/predictions.json -> runs/ablation/kd: a stage folder names the model."""
    p = Path(path)
    return str(p.parent) if p.name == "predictions.json" else str(p)


def table(results: dict[str, dict[str, float]]) -> str:
    columns = ("AP50", *ERRORS, *SPECIAL)
    lines = ["| predictions | " + " | ".join(columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    for path, r in results.items():
        lines.append(f"| {label(path)} | " + " | ".join(f"{r[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.detection_errors", description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="COCO results files (a stage's predictions.json)")
    parser.add_argument("--config", default="configs/pipelines/default.yaml", help="for the val annotations")
    parser.add_argument("--annotations", type=Path, help="COCO annotation file (default: the config's val split)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    def body() -> None:
        annotations = args.annotations or load_config(args.config).data.split_paths("val")[0]
        results = breakdown(annotations, args.predictions)
        print(f"AP50 and the AP50 points each error type costs (TIDE), against {annotations}:\n")
        print(table(results))
        if args.json:
            write_json(args.json, {"annotations": str(annotations), "results": results})

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
