"""Validation mAP of a PyTorch detector through the deploy/ evaluator (the same preprocessing, NMS,
rescaling and COCOeval as every exported artifact)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deploy.coco import CocoDataset
from deploy.evaluate import coco_eval
from deploy.predict import predict as predict_with


def subset(coco: CocoDataset, max_images: int) -> CocoDataset:
    """The first max_images images (all when 0), for quick validation during training."""
    return coco if not max_images or max_images >= len(coco.images) else replace(coco, images=coco.images[:max_images])


def predict(model: torch.nn.Module, coco: CocoDataset, input_size: tuple[int, int], batch_size: int = 8,
            device: torch.device | str = "cpu", progress: bool = False) -> list[dict[str, Any]]:
    """COCO results (xywh, original pixels and category ids) for every image of the dataset."""
    was_training = model.training
    model.to(device)  # a checkpoint or given teacher is built on the CPU; the trainer's model is there already
    model.eval()

    @torch.no_grad()
    def infer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = model.decode(model(torch.from_numpy(x).to(device)))
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy()

    with tqdm(total=len(coco.images), desc="validate", unit="img", disable=not progress, leave=False) as bar:
        results = predict_with(infer, coco, tuple(input_size), batch_size, on_batch=bar.update)
    model.train(was_training)
    return results


def evaluate_model(model: torch.nn.Module, coco: CocoDataset, input_size: tuple[int, int], batch_size: int = 8,
                   device: torch.device | str = "cpu", progress: bool = False) -> tuple[dict[str, Any], list]:
    """(metrics, results) of the model on the dataset."""
    results = predict(model, coco, input_size, batch_size, device, progress)
    return coco_eval(coco, results), results


