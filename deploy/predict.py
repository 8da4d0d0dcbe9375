"""Detections of any model on a COCO dataset: the one path from images to COCO results that the
PyTorch model, every exported artifact and the device benchmark share."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import numpy as np

from deploy.coco import CocoDataset
from deploy.evaluate import to_coco_results
from deploy.postprocess import select_detections
from deploy.preprocess import Letterbox, model_input, preprocess_batch, unletterbox_boxes
from deploy.runtimes.tensorrt import ENGINE_NMS_OUTPUTS

# float32 [N, 3, H, W] -> (boxes [N, A, 4] xyxy input pixels, scores [N, A, C] probabilities), or for a
# model with NMS in its graph the kept (boxes [N, K, 4], scores [N, K], labels [N, K])
InferFn = Callable[[np.ndarray], Tuple[np.ndarray, ...]]


GRAPH_NMS_OUTPUTS = ("det_boxes", "det_scores", "det_labels")  # a model exported with export.nms: graph


def runner_infer(runner: Any) -> InferFn:
    """A runner's infer as an InferFn: (boxes, scores) as the export contract says, or, for a model with
    NMS in its graph (batch 1), its kept (boxes [1, K, 4], scores [1, K], labels [1, K])."""
    if GRAPH_NMS_OUTPUTS[0] in getattr(runner, "outputs", ()):
        def infer_kept(images: np.ndarray) -> tuple[np.ndarray, ...]:
            out = runner.infer(images)
            return tuple(out[name][None] for name in GRAPH_NMS_OUTPUTS)
        return infer_kept
    if ENGINE_NMS_OUTPUTS[0] in getattr(runner, "outputs", ()):
        def infer_engine_kept(images: np.ndarray) -> tuple[np.ndarray, ...]:
            out = runner.infer(images)
            n = int(out["num_detections"].reshape(-1)[0])  # batch 1
            return tuple(out[name][:, :n] for name in ENGINE_NMS_OUTPUTS[1:])
        return infer_engine_kept

    def infer(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = runner.infer(images)
        return out["boxes"], out["scores"]
    return infer


def detections(boxes: np.ndarray, scores: np.ndarray, lb: Letterbox,
               labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw outputs -> (boxes [K, 4] xyxy original pixels, scores [K], labels [K]); with labels,
    the model's graph already ran NMS and boxes, scores are what it kept."""
    if labels is None:
        boxes, scores, labels = select_detections(boxes, scores)
    return unletterbox_boxes(boxes, lb), scores.astype(np.float32), labels.astype(np.int64)


def image_detections(outputs: tuple[np.ndarray, ...], k: int,
                     lb: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image k's detections from an InferFn's outputs, either form."""
    if len(outputs) == 3:
        return detections(outputs[0][k], outputs[1][k], lb, outputs[2][k])
    return detections(outputs[0][k], outputs[1][k].astype(np.float32), lb)


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
        outputs = infer(x)
        for k, (info, lb) in enumerate(zip(images, letterboxes)):
            kept_boxes, kept_scores, labels = image_detections(outputs, k, lb)
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
        outputs = infer(np.stack(batch))
        for k, lb in enumerate(lbs):
            image_detections(outputs, k, lb)
    return call
