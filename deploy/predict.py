"""Detections of any model on a COCO dataset: the one path from images to COCO results that the
PyTorch model, every exported artifact and the device benchmark share."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import numpy as np

from deploy.coco import CocoDataset
from deploy.evaluate import to_coco_results
from deploy.postprocess import select_detections
from deploy.preprocess import Letterbox, model_input, preprocess_batch, unletterbox_boxes

# float32 [N, 3, H, W] -> (boxes [N, A, 4] xyxy input pixels, scores [N, A, C] probabilities)
InferFn = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]


def runner_infer(runner: Any) -> InferFn:
    """A runner's infer as an InferFn (outputs named boxes and scores, as the export contract says)."""
    def infer(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = runner.infer(images)
        return out["boxes"], out["scores"]
    return infer


def detections(boxes: np.ndarray, scores: np.ndarray, lb: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw outputs -> (boxes [K, 4] xyxy original pixels, scores [K], labels [K])."""
    kept_boxes, kept_scores, labels = select_detections(boxes, scores)
    return unletterbox_boxes(kept_boxes, lb), kept_scores, labels


def predict(infer: InferFn, coco: CocoDataset, input_size: tuple[int, int], batch_size: int = 8,
            fixed_batch: int | None = None, on_batch: Callable[[int], None] | None = None,
            uint8: bool = False) -> list[dict[str, Any]]:
    """COCO results (xywh, original pixels, category ids) for every image of the dataset.

    With fixed_batch (a static-shape artifact), every batch is that size: the last is padded with
    zero images whose outputs are dropped. uint8: the model takes uint8 HWC letterboxed images.
    """
    size = fixed_batch or batch_size
    results: list[dict[str, Any]] = []
    for start in range(0, len(coco.images), size):
        images = coco.images[start : start + size]
        x, letterboxes = preprocess_batch([coco.image_path(i) for i in images], tuple(input_size), uint8)
        if fixed_batch and len(images) < fixed_batch:
            x = np.concatenate([x, np.zeros((fixed_batch - len(images),) + x.shape[1:], x.dtype)])
        boxes, scores = infer(x)
        for k, (info, lb) in enumerate(zip(images, letterboxes)):
            kept_boxes, kept_scores, labels = detections(boxes[k], scores[k].astype(np.float32), lb)
            results += to_coco_results(info["id"], kept_boxes, kept_scores, labels, coco.cat_ids)
        if on_batch:
            on_batch(len(images))
    return results


def end_to_end(infer: InferFn, images: list[np.ndarray], input_size: tuple[int, int],
               uint8: bool = False) -> Callable[[], None]:
    """A call that runs preprocess (letterbox, normalise; only letterbox for a uint8-input model), infer
    and NMS + rescale on a batch of decoded HWC uint8 images: what a device does per frame, file
    decoding excluded."""
    def call() -> None:
        batch, lbs = [], []
        for image in images:
            x, lb = model_input(image, input_size, uint8)
            batch.append(x)
            lbs.append(lb)
        boxes, scores = infer(np.stack(batch))
        for k, lb in enumerate(lbs):
            detections(boxes[k], scores[k].astype(np.float32), lb)
    return call
