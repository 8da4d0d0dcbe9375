"""NMS benchmark (not a test): deploy/'s numpy NMS against the per-box loop it replaced, torchvision's
C++ one and OpenCV's (cv2.dnn.NMSBoxesBatched, where cv2 imports: JetPack ships it), on the same
candidates, side by side in one process, after checking they keep one set. OpenCV could serve deploy/
as a fast path only if it keeps exactly the same set on every case; the table says whether it does.

A second table times the whole host post-processing of one image, deploy.postprocess.select_detections
(score threshold, top-k, class-aware NMS, max detections), on a dense detector's raw outputs: 3024
anchors (a 384 px input at strides 8, 16, 32) x 1, 10 and 80 classes: 20 and 60 objects, and boxes
regressed loosely (NMS merges few, so many are kept).
--baseline REV times that revision's select_detections beside today's, in turns, in one process (read
with `git show`, run from memory: the old code never enters the repository); a third table splits
where each one's time goes.

    edgekd bench-nms [--json runs/bench-nms.json] [--repeats 50] [--baseline HEAD]

Candidates are made the way a dense detector's are: noisy copies of a few dozen objects, random
scores, spread over the classes; plus the adversarial chain (each box overlapping the next).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deploy.errors import InputError, report
from deploy.files import write_json
from deploy.machine import machine_info, machine_line
from deploy.postprocess import (
    IOU_THRESHOLD,
    MAX_DETECTIONS,
    PRE_NMS_TOPK,
    SCORE_THRESHOLD,
    batched_nms,
    candidates,
    greedy_nms_until,
    select_detections,
)
from deploy.tables import markdown_table

CASES = [(100, 10), (300, 10), (1000, 10), (1000, 80), (1000, 1)]  # (candidates, classes)
# raw outputs: (classes, objects, box jitter)
SCENES = [(classes, objects, 1.0) for classes in (1, 10, 80) for objects in (20, 60)] + [(80, 20, 4.0)]
REPO = Path(__file__).resolve().parents[2]


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


def anchor_points(size: int = 384, strides: tuple[int, ...] = (8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(anchor centres [A, 2], their strides [A]) of a dense detector's levels: 3024 at 384 px."""
    points, level = [], []
    for s in strides:
        x, y = np.meshgrid((np.arange(size // s) + 0.5) * s, (np.arange(size // s) + 0.5) * s)
        points.append(np.stack([x.ravel(), y.ravel()], 1))
        level.append(np.full(x.size, s, np.float64))
    return np.concatenate(points), np.concatenate(level)


def dense_outputs(rng: np.random.Generator, classes: int, objects: int, size: int = 384,
                  jitter: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A dense detector's raw outputs on one image: boxes [A, 4] and sigmoid scores [A, C].

    Each anchor inside an object, at a level that fits its size, regresses a jittered copy of its box and
    scores it by how central it sits (GFL's quality score: the centre anchors near 0.9, the rim near 0.03);
    one or two look-alike classes get a fraction of that score; every other score is background
    (logit N(-6.5, 1): a few dozen pairs above 0.05 at 80 classes). Crowded scenes pass pre_nms_topk.
    jitter scales the box noise: 4 is a model that regresses loosely (early in training, or INT8 gone
    wrong), whose boxes NMS seldom merges.
    """
    points, strides = anchor_points(size)
    logits = rng.normal(-6.5, 1.0, (len(points), classes))
    wh = strides[:, None] * rng.uniform(2, 6, (len(points), 2))
    boxes, best = np.concatenate([points - wh / 2, points + wh / 2], 1), np.zeros(len(points))
    for _ in range(objects):
        owh = np.exp(rng.uniform(np.log(12), np.log(size * 0.7), 2))
        centre = rng.uniform(owh / 2, size - owh / 2)
        box = np.concatenate([centre - owh / 2, centre + owh / 2])
        lt, rb, fit = points - box[:2], box[2:] - points, max(owh) / strides
        idx = np.flatnonzero(np.all(lt > 0, 1) & np.all(rb > 0, 1) & (fit > 2) & (fit < 24))
        q = np.sqrt(np.minimum(lt[idx], rb[idx]).prod(1) / np.maximum(lt[idx], rb[idx]).prod(1))
        idx, q = idx[q > best[idx]], q[q > best[idx]]  # an anchor regresses the object it sits most centrally in
        best[idx], label = q, rng.integers(classes)
        noise = jitter * (0.05 + 0.25 * (1 - q))  # the off-centre anchors regress worse
        # distances from the anchor to the four sides, as GFL regresses them: never negative, so never a box
        # whose x2 < x1 (those IoU differently in torchvision and OpenCV, and no detector outputs them)
        sides = np.concatenate([lt[idx], rb[idx]], 1) * np.exp(rng.normal(0, 1, (idx.size, 4)) * noise[:, None])
        boxes[idx] = np.concatenate([points[idx] - sides[:, :2], points[idx] + sides[:, 2:]], 1)
        logits[idx, label] = rng.normal(6 * q - 3.5, 0.7)
        for other in rng.choice(classes, min(2, classes - 1), replace=False):
            if other != label:
                logits[idx, other] = np.maximum(logits[idx, other], logits[idx, label] - rng.uniform(1.5, 3.5))
    return boxes.astype(np.float32), (1 / (1 + np.exp(-logits))).astype(np.float32)


def median_ms(fn: Callable[..., object], args: tuple, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def medians_in_turn(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each call, the calls taking turns (one of each per repeat): a load that comes and goes
    (a training run beside) weighs on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


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


def baseline_module(rev: str) -> types.ModuleType:
    """deploy/postprocess.py as it was at git revision `rev`, run from memory (the old code is never written
    into the repository)."""
    proc = subprocess.run(["git", "show", f"{rev}:deploy/postprocess.py"], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise InputError(f"--baseline {rev}: git show cannot read deploy/postprocess.py there "
                         f"({(proc.stderr.strip().splitlines() or ['no output'])[-1]})")
    module = types.ModuleType(f"postprocess_at_{rev}")
    exec(compile(proc.stdout, f"{rev}:deploy/postprocess.py", "exec"), module.__dict__)
    return module


def torchvision_select(boxes: np.ndarray, scores: np.ndarray, iou: float = IOU_THRESHOLD,
                       max_detections: int = MAX_DETECTIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, labels) select_detections must keep, in order: threshold, top-k and batched_nms run by
    torchvision (the reference this benchmark and tests/deploy/test_postprocess.py hold it to)."""
    import torch  # here, not at the top: `edgekd bench-nms --help` loads no torch
    from torchvision.ops import batched_nms as tv_batched_nms

    s = torch.from_numpy(scores)
    loc, cls = torch.nonzero(s > SCORE_THRESHOLD, as_tuple=True)
    cand = s[loc, cls]
    if cand.numel() > PRE_NMS_TOPK:
        cand, top = cand.topk(PRE_NMS_TOPK)
        loc, cls = loc[top], cls[top]
    keep = tv_batched_nms(torch.from_numpy(boxes)[loc], cand, cls, iou)[:max_detections]
    return boxes[loc[keep].numpy()], cand[keep].numpy(), cls[keep].numpy()


def old_parts(boxes: np.ndarray, scores: np.ndarray, iou: float, old: types.ModuleType,
              cv2_here: bool) -> dict[str, Callable]:
    """The steps of the old select_detections, each alone on its own input: where its time went."""
    loc, cls = np.nonzero(scores > SCORE_THRESHOLD)
    cand = scores[loc, cls]
    top = np.argpartition(-cand, PRE_NMS_TOPK - 1)[:PRE_NMS_TOPK] if cand.size > PRE_NMS_TOPK else slice(None)
    b, s, c = boxes[loc[top]], cand[top], cls[top]
    parts = {"before: threshold": lambda: scores[np.nonzero(scores > SCORE_THRESHOLD)],
             "before: top-k": lambda: np.argpartition(-cand, PRE_NMS_TOPK - 1) if cand.size > PRE_NMS_TOPK else None}
    if cv2_here:
        parts["before: NMS (OpenCV)"] = lambda: old.batched_nms(b, s, c, iou, True)
    parts["before: NMS (numpy)"] = lambda: old.batched_nms(b, s, c, iou, False)
    return parts


def new_parts(boxes: np.ndarray, scores: np.ndarray, iou: float, cv2_here: bool) -> dict[str, Callable]:
    """The steps of today's select_detections, each alone on its own input."""
    index, cand = candidates(scores, SCORE_THRESHOLD, PRE_NMS_TOPK)
    loc, cls = np.divmod(index, scores.shape[1])
    b = boxes[loc]
    parts = {"now: threshold + top-k": lambda: candidates(scores, SCORE_THRESHOLD, PRE_NMS_TOPK)}
    if cv2_here:
        parts["now: NMS (OpenCV)"] = lambda: greedy_nms_until(b, cand, cls, iou, 100, True)
    parts["now: NMS (numpy)"] = lambda: greedy_nms_until(b, cand, cls, iou, 100, False)
    return parts


def select_calls(boxes: np.ndarray, scores: np.ndarray, iou: float, old: types.ModuleType | None,
                 cv2_here: bool) -> dict[str, Callable]:
    """The select_detections to time on one image: the baseline's, today's, and today's on the numpy NMS."""
    calls = {"before": lambda: old.select_detections(boxes, scores, iou_threshold=iou)} if old is not None else {}
    calls["now"] = lambda: select_detections(boxes, scores, iou_threshold=iou)  # OpenCV's NMS where cv2 imports
    if cv2_here:
        calls["now, numpy NMS"] = lambda: select_detections(boxes, scores, iou_threshold=iou, use_opencv=False)
    return calls


def select_rows(args: argparse.Namespace, old: types.ModuleType | None, cv2_here: bool) -> tuple[list, list, list]:
    """(JSON rows, table cells, where-the-time-goes cells) of select_detections on each scene's raw outputs,
    after checking that every version keeps torchvision's detections."""
    rng = np.random.default_rng(1)
    rows, cells, parts = [], [], []
    for classes, objects, jitter in SCENES:
        name = f"{classes} classes, {objects} objects" + (", loose boxes" if jitter != 1 else "")
        boxes, scores = dense_outputs(rng, classes, objects, jitter=jitter)
        _, expected_scores, expected_labels = torchvision_select(boxes, scores, args.iou)
        expected = (expected_scores.tolist(), expected_labels.tolist())
        calls = select_calls(boxes, scores, args.iou, old, cv2_here)
        for label, call in calls.items():
            _, kept_scores, kept_labels = call()
            if (kept_scores.tolist(), kept_labels.tolist()) != expected:
                raise ValueError(f"{name}: select_detections ({label}) does not keep torchvision's detections")
        ms = medians_in_turn(calls, args.repeats)
        split = medians_in_turn({**(old_parts(boxes, scores, args.iou, old, cv2_here) if old is not None else {}),
                                 **new_parts(boxes, scores, args.iou, cv2_here)}, args.repeats)
        candidates_above = int((scores > SCORE_THRESHOLD).sum())
        rows.append({"case": name, "anchors": len(boxes), "classes": classes, "objects": objects, "jitter": jitter,
                     "candidates": candidates_above, "kept": len(expected[0]),
                     **{f"{k.replace(', ', '_').replace(' ', '_')}_ms": v for k, v in ms.items()},
                     "parts_ms": split, "same_as_torchvision": True})
        before = ms.get("before")
        cells.append([name, candidates_above, len(expected[0]), f"{before:.3f}" if before else "-", f"{ms['now']:.3f}",
                      f"{before / ms['now']:.1f}x" if before else "-", f"{ms.get('now, numpy NMS', ms['now']):.3f}"])
        parts.append([name, *(f"{v:.3f}" for v in split.values())])
    return rows, cells, [["case", *split], *parts]


def nms_rows(args: argparse.Namespace, cv2_here: bool) -> tuple[list, list]:
    """(JSON rows, table cells) of the class-aware NMS alone on each candidate set, after checking that
    every implementation keeps one set."""
    import torch
    from torchvision.ops import batched_nms as tv_batched_nms

    rng = np.random.default_rng(0)
    cases = [(f"{n} candidates, {c} classes", scene(rng, n, c)) for n, c in CASES]
    cases.append(("chain of 1000, 1 class", chain(1000)))
    rows, cells = [], []
    for name, (boxes, scores, labels) in cases:
        tensors = tuple(map(torch.from_numpy, (boxes, scores, labels)))
        numpy_nms = (boxes, scores, labels, args.iou, False)  # batched_nms would take OpenCV's path where cv2 imports
        kept = {"numpy": batched_nms(*numpy_nms), "loop": loop_nms(boxes, scores, labels, args.iou),
                "torchvision": tv_batched_nms(*tensors, args.iou).numpy()}
        if len({tuple(sorted(k.tolist())) for k in kept.values()}) != 1:
            raise ValueError(f"{name}: the three NMS keep different sets")
        ms = {"numpy": median_ms(batched_nms, numpy_nms, args.repeats),
              "loop": median_ms(loop_nms, (boxes, scores, labels, args.iou), args.repeats),
              "torchvision": median_ms(tv_batched_nms, (*tensors, args.iou), args.repeats)}
        row = {"case": name, "kept": len(kept["numpy"]), **{f"{k}_ms": v for k, v in ms.items()}}
        opencv = ["-", "-"]
        if cv2_here:
            same = set(opencv_nms(boxes, scores, labels, args.iou).tolist()) == set(kept["numpy"].tolist())
            row.update(opencv_ms=median_ms(opencv_nms, (boxes, scores, labels, args.iou), args.repeats),
                       opencv_same_set=same)
            opencv = [f"{row['opencv_ms']:.2f}", "yes" if same else "no"]
        rows.append(row)
        cells.append([name, len(kept["numpy"]), f"{ms['loop']:.2f}", f"{ms['numpy']:.2f}",
                      f"{ms['loop'] / ms['numpy']:.1f}x", f"{ms['torchvision']:.2f}", *opencv])
    return rows, cells


def opencv_importable() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd bench-nms", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="runs/bench-nms.json")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--iou", type=float, default=0.6)
    parser.add_argument("--baseline", metavar="REV", help="also time select_detections as it was at this git revision "
                                                          "(HEAD: the last commit), beside today's")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too
    import torch

    torch.set_num_threads(1)  # NMS runs on one thread in both
    cv2_here = opencv_importable()
    try:
        old = baseline_module(args.baseline) if args.baseline else None
    except InputError as e:
        return report(e)
    try:
        nms_json, nms_cells = nms_rows(args, cv2_here)
        select_json, select_cells, parts_cells = select_rows(args, old, cv2_here)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    machine = machine_info()
    print(f"{machine_line(machine)}; IoU {args.iou}; median of {args.repeats} calls\n")
    print(markdown_table(["case", "kept", "per-box loop ms (before)", "deploy numpy ms (now)", "speed-up",
                          "torchvision C++ ms", "OpenCV ms", "OpenCV same set"], nms_cells, numbers_right=True))
    print(f"\nselect_detections on one image's raw outputs (3024 anchors, score > {SCORE_THRESHOLD}, top "
          f"{PRE_NMS_TOPK}, 100 kept at most; the calls in turns; each keeps torchvision's detections):\n")
    print(markdown_table(["scene", "candidates", "kept", f"before ms ({args.baseline or 'no --baseline'})", "now ms",
                          "speed-up", "now, numpy NMS ms"], select_cells, numbers_right=True))
    print("\nWhere the time goes (ms; each step alone on its own input):\n")
    print(markdown_table(parts_cells[0], parts_cells[1:], numbers_right=True))
    write_json(args.json, {"machine": machine, "iou": args.iou, "repeats": args.repeats, "baseline": args.baseline,
                           "rows": nms_json, "select_detections": select_json})
    return 0


if __name__ == "__main__":
    sys.exit(main())
