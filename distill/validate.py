"""Validation mAP of a PyTorch detector through the deploy/ evaluator (the same preprocessing, NMS,
rescaling and COCOeval as every exported artifact)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from deploy.coco import CocoDataset
from deploy.evaluate import coco_eval, to_coco_results
from deploy.postprocess import select_detections
from deploy.preprocess import preprocess_batch, unletterbox_boxes
from distill.models.gfl_head import decode


def subset(coco: CocoDataset, max_images: int) -> CocoDataset:
    """The first max_images images (all when 0), for quick validation during training."""
    return coco if not max_images or max_images >= len(coco.images) else replace(coco, images=coco.images[:max_images])


@torch.no_grad()
def predict(model: torch.nn.Module, coco: CocoDataset, input_size: tuple[int, int], batch_size: int = 8,
            device: torch.device | str = "cpu", progress: bool = False) -> list[dict[str, Any]]:
    """COCO results (xywh, original pixels and category ids) for every image of the dataset."""
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    batches = range(0, len(coco.images), batch_size)
    for start in tqdm(batches, desc="validate", unit="batch", disable=not progress, leave=False):
        images = coco.images[start : start + batch_size]
        x, letterboxes = preprocess_batch([coco.image_path(i) for i in images], tuple(input_size))
        boxes, scores = decode(model(torch.from_numpy(x).to(device)))
        boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
        for k, (info, lb) in enumerate(zip(images, letterboxes)):
            kept_boxes, kept_scores, labels = select_detections(boxes[k], scores[k])
            results += to_coco_results(info["id"], unletterbox_boxes(kept_boxes, lb), kept_scores, labels, coco.cat_ids)
    model.train(was_training)
    return results


def evaluate_model(model: torch.nn.Module, coco: CocoDataset, input_size: tuple[int, int], batch_size: int = 8,
                   device: torch.device | str = "cpu", progress: bool = False) -> tuple[dict[str, Any], list]:
    """(metrics, results) of the model on the dataset."""
    results = predict(model, coco, input_size, batch_size, device, progress)
    return coco_eval(coco, results), results


