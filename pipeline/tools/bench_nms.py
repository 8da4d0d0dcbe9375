"""NMS benchmark (not a test): deploy/'s numpy NMS against the per-box loop it replaced, torchvision's
C++ one and OpenCV's (cv2.dnn.NMSBoxesBatched, where cv2 imports: JetPack ships it), on the same
candidates, side by side in one process, after checking they keep one set. OpenCV could serve deploy/
as a fast path only if it keeps exactly the same set on every case; the table says whether it does.

    edgekd bench-nms [--json runs/bench-nms.json] [--repeats 50]

Candidates are made the way a dense detector's are: noisy copies of a few dozen objects, random
scores, spread over the classes; plus the adversarial chain (each box overlapping the next).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torchvision.ops import batched_nms as tv_batched_nms

from deploy.files import write_json
from deploy.machine import machine_info, machine_line
from deploy.postprocess import batched_nms
from deploy.tables import markdown_table

CASES = [(100, 10), (300, 10), (1000, 10), (1000, 80), (1000, 1)]  # (candidates, classes)


def scene(rng: np.random.Generator, n: int, classes: int, objects: int = 30, size: int = 384):
    """n candidate boxes around `objects` objects (4 px jitter, +-20% size), scores and labels."""
    centres, sizes = rng.uniform(20, size - 20, (objects, 2)), rng.uniform(16, 150, (objects, 2))
    which = rng.integers(0, objects, n)
    c, wh = centres[which] + rng.normal(0, 4, (n, 2)), sizes[which] * rng.uniform(0.8, 1.2, (n, 2))
    return (np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32), rng.random(n).astype(np.float32),
            rng.integers(0, classes, n))


def chain(n: int):
    x = np.arange(n, dtype=np.float32) * 2  # IoU 8/12 with the next box, 6/14 with the one after
    boxes = np.stack([x, np.zeros(n, np.float32), x + 10, np.full(n, 10, np.float32)], axis=1)
    return boxes, np.linspace(1, 0.01, n).astype(np.float32), np.zeros(n, np.int64)


def median_ms(fn: Callable[..., object], args: tuple, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def loop_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """The implementation deploy/ had before (one Python step per kept box, classes apart by offsets),
    kept here as the baseline the numpy NMS is measured against."""
    boxes = boxes.astype(np.float64) + labels.astype(np.float64)[:, None] * (float(boxes.max()) + 1.0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        wh = np.clip(np.minimum(boxes[i, 2:], boxes[rest, 2:]) - np.maximum(boxes[i, :2], boxes[rest, :2]), 0, None)
        inter = wh[:, 0] * wh[:, 1]
        order = rest[inter / np.maximum(area[i] + area[rest] - inter, np.finfo(np.float64).tiny) <= iou]
    return np.asarray(keep, dtype=np.int64)


def opencv_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """OpenCV's class-aware NMS on xywh boxes, every candidate above score 0 (deploy/ thresholds before NMS)."""
    import cv2

    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).astype(np.float64)
    return np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float64), labels.astype(np.int64), 0.0, iou),
                      dtype=np.int64).reshape(-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd bench-nms", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="runs/bench-nms.json")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--iou", type=float, default=0.6)
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too
    torch.set_num_threads(1)  # NMS runs on one thread in both
    rng = np.random.default_rng(0)
    cases = [(f"{n} candidates, {c} classes", scene(rng, n, c)) for n, c in CASES] + [("chain of 1000, 1 class", chain(1000))]
    rows, cells = [], []
    try:
        import cv2  # noqa: F401
        cv2_here = True
    except ImportError:
        cv2_here = False
    for name, (boxes, scores, labels) in cases:
        tensors = tuple(map(torch.from_numpy, (boxes, scores, labels)))
        kept = {"numpy": batched_nms(boxes, scores, labels, args.iou), "loop": loop_nms(boxes, scores, labels, args.iou),
                "torchvision": tv_batched_nms(*tensors, args.iou).numpy()}
        if len({tuple(sorted(k.tolist())) for k in kept.values()}) != 1:
            print(f"error: {name}: the three NMS keep different sets", file=sys.stderr)
            return 1
        ms = {"numpy": median_ms(batched_nms, (boxes, scores, labels, args.iou), args.repeats),
              "loop": median_ms(loop_nms, (boxes, scores, labels, args.iou), args.repeats),
              "torchvision": median_ms(tv_batched_nms, (*tensors, args.iou), args.repeats)}
        row = {"case": name, "kept": len(kept["numpy"]), **{f"{k}_ms": v for k, v in ms.items()}}
        opencv = ["-", "-"]
        if cv2_here:
            same = set(opencv_nms(boxes, scores, labels, args.iou).tolist()) == set(kept["numpy"].tolist())
            row.update(opencv_ms=median_ms(opencv_nms, (boxes, scores, labels, args.iou), args.repeats), opencv_same_set=same)
            opencv = [f"{row['opencv_ms']:.2f}", "yes" if same else "no"]
        rows.append(row)
        cells.append([name, len(kept["numpy"]), f"{ms['loop']:.2f}", f"{ms['numpy']:.2f}", f"{ms['loop'] / ms['numpy']:.1f}x",
                      f"{ms['torchvision']:.2f}", *opencv])
    machine = machine_info()
    print(f"{machine_line(machine)}; IoU {args.iou}; median of {args.repeats} calls\n")
    print(markdown_table(["case", "kept", "per-box loop ms (before)", "deploy numpy ms (now)", "speed-up", "torchvision C++ ms",
                          "OpenCV ms", "OpenCV same set"], cells, numbers_right=True))
    write_json(args.json, {"machine": machine, "iou": args.iou, "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
