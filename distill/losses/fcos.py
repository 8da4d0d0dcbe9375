"""FCOS's losses (mmdet FCOS with norm_on_bbox and center sampling): a location is positive for the
smallest box that contains it (within center_sampling strides of the box's centre) and whose largest
distance falls in its level's range; sigmoid focal loss over every location / positives; GIoU on
positives weighted by the centerness target / the sum of those targets; centerness BCE / positives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from distill.losses.targets import Targets, centerness_target, focal_loss, gather_targets, mean_over_ranks
from distill.models.heads.fcos import FCOSHead


def level_ranges(strides: torch.Tensor) -> torch.Tensor:
    """FCOS's regression range per location [A, 2]: (-1, 64), (64, 128), (128, 256), ... by level,
    the last level unbounded."""
    levels = torch.unique_consecutive(strides)
    bounds = []
    for i in range(len(levels)):
        low = -1.0 if i == 0 else 64.0 * 2 ** (i - 1)
        high = math.inf if i == len(levels) - 1 else 64.0 * 2**i
        bounds.append((low, high))
    index = torch.searchsorted(levels, strides)
    return torch.tensor(bounds, device=strides.device)[index]


def fcos_assign(points: torch.Tensor, strides: torch.Tensor, ranges: torch.Tensor, gt_boxes: torch.Tensor,
                radius: float = 1.5) -> torch.Tensor:
    """Index of the assigned box per location [A] (-1 background)."""
    num = points.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num,), -1, dtype=torch.long, device=points.device)
    gt = gt_boxes.float()[None]  # [1, G, 4]
    x, y = points[:, 0, None], points[:, 1, None]  # [A, 1]
    ltrb = torch.stack([x - gt[..., 0], y - gt[..., 1], gt[..., 2] - x, gt[..., 3] - y], dim=-1)  # [A, G, 4]
    if radius > 0:
        cx, cy = (gt[..., 0] + gt[..., 2]) / 2, (gt[..., 1] + gt[..., 3]) / 2
        r = radius * strides[:, None]
        region = torch.stack([torch.maximum(cx - r, gt[..., 0]), torch.maximum(cy - r, gt[..., 1]),
                              torch.minimum(cx + r, gt[..., 2]), torch.minimum(cy + r, gt[..., 3])], dim=-1)
        inside = torch.stack([x - region[..., 0], y - region[..., 1], region[..., 2] - x, region[..., 3] - y],
                             dim=-1).min(-1).values > 0
    else:
        inside = ltrb.min(-1).values > 0
    reach = ltrb.max(-1).values
    in_range = (reach >= ranges[:, 0, None]) & (reach <= ranges[:, 1, None])
    areas = ((gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])).expand(num, -1).clone()
    areas[~(inside & in_range)] = math.inf
    best_area, best = areas.min(dim=1)
    return torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))


def assign_targets(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                   radius: float = 1.5) -> Targets:
    points, strides = outputs["points"], outputs["strides"]
    ranges = level_ranges(strides)
    return gather_targets(targets, points.shape[0], points.device,
                          lambda gt: fcos_assign(points, strides, ranges, gt, radius), points)


def centerness_terms(outputs: dict[str, torch.Tensor], boxes: torch.Tensor, assigned: Targets,
                     weights: tuple[float, float, float]) -> dict[str, torch.Tensor]:
    """Focal, centerness-weighted GIoU and centerness BCE, shared by FCOS and ATSS; boxes [N, A, 4] the
    head's decoded boxes in input pixels."""
    n, a, c = outputs["cls_logits"].shape
    pos = assigned.labels >= 0
    focal = focal_loss(outputs["cls_logits"].reshape(n * a, c), assigned.labels,
                       valid=assigned.valid) / assigned.num_pos
    centerness = outputs["centerness"].reshape(n * a).float()
    if pos.any():
        points = outputs["points"].repeat(n, 1)[pos]
        target = centerness_target(points, assigned.boxes[pos])
        denominator = max(mean_over_ranks(float(target.sum()), target.device), 1e-6)
        giou = (generalized_box_iou_loss(boxes.reshape(n * a, 4)[pos], assigned.boxes[pos], reduction="none")
                * target).sum() / denominator
        ctr = F.binary_cross_entropy_with_logits(centerness[pos], target, reduction="sum") / assigned.num_pos
    else:
        giou = ctr = boxes.sum() * 0.0 + centerness.sum() * 0.0  # keeps the graph connected for DDP
    raw = {"focal": focal, "giou": giou, "centerness": ctr}
    out = {f"loss_{k}": v * w for (k, v), w in zip(raw.items(), weights)}
    out.update({f"raw_{k}": v.detach() for k, v in raw.items()})
    return out


def fcos_loss(outputs: dict[str, torch.Tensor], assigned: Targets,
              weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, torch.Tensor]:
    """{'loss_focal', 'loss_giou', 'loss_centerness'} weighted; raw values under 'raw_*'."""
    return centerness_terms(outputs, FCOSHead.distill_boxes(outputs), assigned, weights)
