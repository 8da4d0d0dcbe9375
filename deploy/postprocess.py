"""Detection postprocessing in numpy: score filtering, class-aware NMS, top-k.

Boxes are xyxy in pixels; scores are sigmoid probabilities [A, C] as the exported model gives them.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

try:  # JetPack (and opencv-python) ship OpenCV: its C++ NMS keeps the same set as ours, faster (bench-nms)
    import cv2 as _cv2
except ImportError:
    _cv2 = None


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


# The detection settings host NMS uses, and the in-graph NMS of export.nms: graph bakes in (GFL/mmdet's test config)
SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, PRE_NMS_TOPK = 0.05, 0.6, 100, 1000
NMS_BLOCK = 64  # boxes resolved together: 32 to 128 measured, 64 fastest on 300 and 1000 candidates


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; indices of kept boxes in decreasing score (a box goes when IoU > threshold), the same
    kept set and order as torchvision.ops.nms.

    No Python step per box: the boxes, in score order, are resolved a block at a time. Within a block,
    "kept = not overlapped by a kept higher box" is iterated to its fixed point, which is exactly greedy
    NMS (Cluster-NMS, Zheng et al. 2020: position i is final once every position before it is); then the
    block's kept boxes suppress every later box in one vectorised step. A block bounds the fixed point's
    cost (a chain of boxes each overlapping the next needs as many passes as the chain is long).
    """
    order = np.argsort(-scores, kind="stable")
    ordered = boxes[order].astype(np.float64)  # torchvision compares in the input dtype; float64 avoids ties
    suppressed = np.zeros(len(ordered), dtype=bool)
    for start in range(0, len(ordered), NMS_BLOCK):
        stop = min(start + NMS_BLOCK, len(ordered))
        alive = np.flatnonzero(~suppressed[start:stop]) + start
        if alive.size == 0:
            continue
        overlaps = np.triu(box_iou(ordered[alive], ordered[alive]) > iou_threshold, 1)  # [higher, lower]
        keep = np.ones(alive.size, dtype=bool)
        while True:
            settled = ~(overlaps & keep[:, None]).any(axis=0)
            if np.array_equal(settled, keep):
                break
            keep = settled
        suppressed[alive[~keep]] = True
        later = np.flatnonzero(~suppressed[stop:]) + stop
        if later.size:
            suppressed[later[(box_iou(ordered[alive[keep]], ordered[later]) > iou_threshold).any(axis=0)]] = True
    return order[~suppressed].astype(np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                use_opencv: bool | None = None) -> np.ndarray:
    """Class-aware NMS: boxes of different labels never suppress each other. Indices in decreasing score.

    With OpenCV importable (use_opencv None) its cv2.dnn.NMSBoxesBatched runs: on every bench-nms case
    and every test case it keeps the same set as torchvision, 1.6 to 23x faster than the numpy path.
    Otherwise one numpy NMS per label present (a loop over classes, not boxes): no IoU between classes
    is computed, unlike torchvision's coordinate-offset trick, which costs K^2 across all classes.
    """
    if boxes.size == 0:
        return np.zeros((0,), dtype=np.int64)
    if _use_opencv(use_opencv):
        return opencv_batched_nms(boxes, scores, labels, iou_threshold)
    keep = np.concatenate([members[nms(boxes[members], scores[members], iou_threshold)]
                           for members in (np.flatnonzero(labels == c) for c in np.unique(labels))])
    return keep[np.argsort(-scores[keep], kind="stable")]


def opencv_batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """OpenCV's class-aware NMS (xywh boxes in float64, its stable descending sort, suppression at IoU >
    threshold, as torchvision), every candidate considered; indices in decreasing score."""
    return _opencv_nms_on(boxes, scores, labels, iou_threshold)(slice(None))


def select_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    pre_nms_topk: int = PRE_NMS_TOPK,
    use_opencv: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's boxes [A, 4] and scores [A, C] -> kept (boxes [K, 4], scores [K], labels [K]), in
    decreasing score: the first max_detections that class-aware greedy NMS keeps among the pre_nms_topk
    best (location, class) pairs above score_threshold, as in GFL/mmdet's test config. Equal scores
    go in (location, class) order."""
    index, cand_scores = candidates(scores, score_threshold, pre_nms_topk)
    loc, cls = np.divmod(index, max(scores.shape[-1], 1))
    cand_boxes = np.asarray(boxes, dtype=np.float32)[loc]
    keep = greedy_nms_until(cand_boxes, cand_scores, cls, iou_threshold, max_detections, use_opencv)
    return cand_boxes[keep], cand_scores[keep], cls[keep]


def candidates(scores: np.ndarray, score_threshold: float, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices into scores [A, C], their scores) of the `topk` best above the threshold, in
    decreasing score, ties in index order."""
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)  # a view for the contiguous [A, C] a runtime returns
    index = np.flatnonzero(flat > score_threshold)  # ~9x faster than np.nonzero on the 2-D mask at 80 classes
    if index.size > topk > 0:
        # argpartition is linear; a full sort of the few thousand candidates is not needed to find the best topk
        index = np.sort(index[np.argpartition(-flat[index], topk - 1)[:topk]])
    index = index[np.argsort(-flat[index], kind="stable")]
    return index, flat[index]


def greedy_nms_until(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                     max_detections: int, use_opencv: bool | None = None) -> np.ndarray:
    """Class-aware greedy NMS over candidates in decreasing score: positions of the first max_detections
    it keeps, in order.

    Without OpenCV, one batched_nms over all, cut. With it, the candidates go in slices, stopping once
    max_detections are kept: OpenCV's binding converts every box it is given one Python object at a
    time (~0.3 us each on a Zen 4: most of its time on 1000 candidates), and its NMS compares each
    candidate with every box kept so far, of any class. Exact: greedy NMS decides a candidate from the
    higher ones alone, and the kept never suppress each other, so (kept so far + next slice) in one call
    resolves the slice as one pass over everything would.
    """
    if max_detections <= 0:
        return np.zeros(0, dtype=np.int64)
    if not _use_opencv(use_opencv) or len(scores) <= 2 * max_detections:
        # positions are score order: sorted, ties stay in input order (numpy's batched_nms puts them by class)
        return np.sort(batched_nms(boxes, scores, labels, iou_threshold, use_opencv))[:max_detections]
    nms_of = _opencv_nms_on(boxes, scores, labels, iou_threshold)
    kept = np.zeros(0, dtype=np.int64)
    start, step = 0, 2 * max_detections
    while start < len(scores) and kept.size < max_detections:
        stop = min(start + step, len(scores))
        members = np.concatenate([kept, np.arange(start, stop)])
        kept = np.sort(members[nms_of(members)])  # positions are score order; ties stay in input order
        # the next slice: what the keep rate so far says reaches max_detections, with a margin (fewer calls),
        # and the rest with it when a short tail would be left for one more call
        step = max(int(1.5 * (max_detections - kept.size) * stop / max(kept.size, 1)), max_detections)
        if len(scores) - (stop + step) < step // 2:
            step = len(scores) - stop
        start = stop
    return kept[:max_detections]


def _use_opencv(use_opencv: bool | None) -> bool:
    return _cv2 is not None if use_opencv is None else use_opencv


def _opencv_nms_on(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   iou_threshold: float) -> Callable[[Any], np.ndarray]:
    """members (indices or a slice) -> indices into members that OpenCV's class-aware NMS keeps, in
    decreasing score; the boxes are converted to its xywh float64 once, not once per call."""
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).astype(np.float64)
    scores64, labels64 = scores.astype(np.float64), labels.astype(np.int64)
    floor = float(scores.min()) - 1.0 if scores.size else 0.0  # OpenCV drops scores at or below this: keep all

    def kept(members: Any) -> np.ndarray:
        found = _cv2.dnn.NMSBoxesBatched(xywh[members], scores64[members], labels64[members], floor,
                                         float(iou_threshold))
        return np.asarray(found, dtype=np.int64).reshape(-1)
    return kept
