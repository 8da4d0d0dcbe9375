"""What every head's loss shares: per-location targets for a batch, and the positive count averaged over
DDP ranks (the normaliser of the classification losses and of BCKD)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Targets:
    """Per-location (per-anchor) targets for a batch, flattened to [N*A]."""

    labels: torch.Tensor  # class index; -1 background; -2 ignored (RetinaNet's IoU band between thresholds)
    boxes: torch.Tensor  # [N*A, 4] xyxy input pixels (valid where labels >= 0)
    num_pos: float  # positives in the batch, averaged over ranks, at least 1
    # False where a location's centre lies in the letterbox padding (mmdet's valid_flags from pad_shape):
    # such locations enter neither the classification loss nor the distillation terms.
    valid: torch.Tensor | None = None  # [N*A] bool; None: every location is valid


def mean_over_ranks(value: float, device: torch.device) -> float:
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor(float(value), device=device)
        dist.all_reduce(t)
        return t.item() / dist.get_world_size()
    return float(value)


def inside_region(centers: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """[A] bool: centres [A, 2] inside region [4] xyxy (None: all True)."""
    if region is None:
        return torch.ones(centers.shape[0], dtype=torch.bool, device=centers.device)
    r = region.to(centers.device, centers.dtype)
    return (centers[:, 0] >= r[0]) & (centers[:, 0] < r[2]) & (centers[:, 1] >= r[1]) & (centers[:, 1] < r[3])


def gather_targets(targets: list[dict[str, torch.Tensor]], num_anchors: int, device: torch.device,
                   assign: Callable[[torch.Tensor], torch.Tensor], centers: torch.Tensor | None = None) -> Targets:
    """Run `assign(gt_boxes) -> gt index per anchor [A]` (-1 background, -2 ignore) on each image and
    gather labels and matched boxes over the batch. With anchor centres [A, 2] and a target's 'valid'
    region, locations in the letterbox padding are marked invalid (positives always stay valid)."""
    labels, boxes, valid = [], [], []
    for t in targets:
        gt_index = assign(t["boxes"])
        pos = gt_index >= 0
        image_labels = gt_index.clone()
        image_labels[pos] = t["labels"][gt_index[pos]]
        image_boxes = torch.zeros(num_anchors, 4, device=device)
        image_boxes[pos] = t["boxes"][gt_index[pos]].float()
        labels.append(image_labels)
        boxes.append(image_boxes)
        if centers is not None:
            valid.append(inside_region(centers, t.get("valid")) | pos)
    labels_all = torch.cat(labels)
    num_pos = mean_over_ranks(float((labels_all >= 0).sum()), device)
    return Targets(labels_all, torch.cat(boxes), max(num_pos, 1.0), torch.cat(valid) if valid else None)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid focal loss summed over locations and classes; logits [M, C], labels [M] (-1 background,
    -2 ignored: left out), valid [M] (False: padding, left out). torchvision's sigmoid_focal_loss on
    one-hot targets, in float32."""
    from torchvision.ops import sigmoid_focal_loss

    keep = labels >= -1
    if valid is not None:
        keep = keep & valid
    logits, labels = logits[keep].float(), labels[keep]
    onehot = torch.zeros_like(logits)
    pos = labels >= 0
    onehot[pos, labels[pos]] = 1.0
    return sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="sum")


def centerness_target(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of points [P, 2] inside their boxes [P, 4]: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    left_right = torch.stack([points[:, 0] - boxes[:, 0], boxes[:, 2] - points[:, 0]], dim=1).clamp(min=0)
    top_bottom = torch.stack([points[:, 1] - boxes[:, 1], boxes[:, 3] - points[:, 1]], dim=1).clamp(min=0)
    ratio = (left_right.min(1).values / left_right.max(1).values.clamp(min=1e-6)
             * top_bottom.min(1).values / top_bottom.max(1).values.clamp(min=1e-6))
    return ratio.sqrt()
