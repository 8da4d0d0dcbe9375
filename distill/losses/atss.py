"""ATSS's losses (mmdet ATSSHead): ATSS assignment on one square anchor per location, sigmoid focal
loss / positives, GIoU on the decoded boxes of positives weighted by the centerness target / the sum
of those targets, centerness BCE / positives (weights 1, 2, 1)."""

from __future__ import annotations

import torch

from distill.losses.fcos import centerness_terms
from distill.losses.targets import Targets, gather_targets
from distill.models.assign import atss_assign
from distill.models.heads.atss import ATSSHead


def assign_targets(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]], topk: int = 9) -> Targets:
    anchors = outputs["anchors"]
    level_sizes = torch.unique_consecutive(outputs["strides"], return_counts=True)[1].tolist()
    return gather_targets(targets, anchors.shape[0], anchors.device,
                          lambda gt: atss_assign(anchors, level_sizes, gt, topk), (anchors[:, :2] + anchors[:, 2:]) / 2)


def atss_loss(outputs: dict[str, torch.Tensor], assigned: Targets,
              weights: tuple[float, float, float] = (1.0, 2.0, 1.0)) -> dict[str, torch.Tensor]:
    """{'loss_focal', 'loss_giou', 'loss_centerness'} weighted; raw values under 'raw_*'."""
    return centerness_terms(outputs, ATSSHead.distill_boxes(outputs), assigned, weights)
