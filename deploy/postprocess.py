"""Detection postprocessing in numpy: score filtering, class-aware NMS, top-k.

Boxes are xyxy in pixels; scores are sigmoid probabilities [A, C] as the exported model gives them.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of [K, 4] xyxy boxes."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N, 4] and [M, 4] xyxy boxes -> [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float32).tiny)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; indices of kept boxes in decreasing score (a box goes when IoU > threshold),
    the same rule as torchvision.ops.nms."""
    boxes = boxes.astype(np.float64)  # torchvision compares in the input dtype; float64 avoids ties
    order = np.argsort(-scores, kind="stable")
    areas = box_area(boxes)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, np.finfo(np.float64).tiny)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS: boxes of different labels never suppress each other."""
    if boxes.size == 0:
        return np.zeros((0,), dtype=np.int64)
    # Shift each class into its own region so one NMS pass handles all classes (torchvision's trick).
    offsets = labels.astype(np.float64) * (float(boxes.max()) + 1.0)
    return nms(boxes.astype(np.float64) + offsets[:, None], scores, iou_threshold)


def select_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's boxes [A, 4] and scores [A, C] -> kept (boxes [K, 4], scores [K], labels [K]).

    Every (location, class) pair above the threshold is a candidate, as in GFL/mmdet's test config.
    """
    loc, cls = np.nonzero(scores > score_threshold)
    cand_scores = scores[loc, cls]
    if cand_scores.size > pre_nms_topk:
        top = np.argpartition(-cand_scores, pre_nms_topk - 1)[:pre_nms_topk]
        loc, cls, cand_scores = loc[top], cls[top], cand_scores[top]
    cand_boxes = boxes[loc]
    keep = batched_nms(cand_boxes, cand_scores, cls, iou_threshold)[:max_detections]
    return cand_boxes[keep].astype(np.float32), cand_scores[keep].astype(np.float32), cls[keep].astype(np.int64)
