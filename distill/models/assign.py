"""ATSS assignment (Zhang et al., CVPR 2020), as GFL uses it: per ground-truth box, the k anchors per
level closest to its centre are candidates; those with IoU >= mean + std of the candidates' IoUs and
centre inside the box are positives. Anchors are squares of anchor_scale * stride on each point."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou


def point_anchors(points: torch.Tensor, strides: torch.Tensor, anchor_scale: float = 8.0) -> torch.Tensor:
    """Square anchors [A, 4] xyxy of side anchor_scale * stride centred on the points."""
    half = (anchor_scale * strides / 2)[:, None]
    return torch.cat([points - half, points + half], dim=1)


@torch.no_grad()
def atss_assign(anchors: torch.Tensor, level_sizes: list[int], gt_boxes: torch.Tensor, topk: int = 9) -> torch.Tensor:
    """Index of the assigned ground-truth box for each anchor [A] (-1: background).

    anchors [A, 4] xyxy, in level order with level_sizes anchors per level; gt_boxes [G, 4] xyxy.
    """
    num_anchors = anchors.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.numel() == 0:
        return assigned
    ious = box_iou(anchors, gt_boxes)  # [A, G]
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, gt_centres)  # [A, G]
    candidates = []
    start = 0
    for size in level_sizes:
        k = min(topk, size)
        candidates.append(distances[start : start + size].topk(k, dim=0, largest=False).indices + start)
        start += size
    candidates = torch.cat(candidates, dim=0)  # [K, G]
    candidate_ious = ious.gather(0, candidates)  # [K, G]
    threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # [G]
    positive = candidate_ious >= threshold[None, :]
    centres = anchor_centres[candidates]  # [K, G, 2]
    inside = torch.stack([
        centres[..., 0] - gt_boxes[None, :, 0], centres[..., 1] - gt_boxes[None, :, 1],
        gt_boxes[None, :, 2] - centres[..., 0], gt_boxes[None, :, 3] - centres[..., 1],
    ], dim=-1).min(dim=-1).values > 0.01
    positive &= inside
    # An anchor chosen by several boxes goes to the one it overlaps most.
    masked = torch.full_like(ious, -1.0)
    gt_index = torch.arange(gt_boxes.shape[0], device=anchors.device)[None].expand_as(candidates)
    masked[candidates[positive], gt_index[positive]] = ious[candidates[positive], gt_index[positive]]
    best_iou, best_gt = masked.max(dim=1)
    assigned[best_iou >= 0] = best_gt[best_iou >= 0]
    return assigned
