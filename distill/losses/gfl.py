"""GFL's losses: Quality Focal Loss, Distribution Focal Loss and the GIoU box loss, the ATSS target
assignment, and the batch loss that returns the named terms (distill/losses/detection.py makes the
trainer's loss function of them).

Weights and normalisers follow GFL (mmdet gfl_head): QFL 1.0 over every location, divided by the
number of positives; GIoU 2.0 and DFL 0.25 on positives, weighted by the detached best class score
and divided by the sum of those weights (DFL also by its 4 sides).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss

from distill.losses.targets import Targets, gather_targets, mean_over_ranks
from distill.models.assign import atss_assign, point_anchors
from distill.models.heads.gfl import box_to_distance, distance_to_box, distribution_to_distance


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor,
                       beta: float = 2.0) -> torch.Tensor:
    """QFL per location [N]: BCE of the sigmoid score against the IoU quality at the true class (0 at
    others), scaled by |score - target|^beta. logits [N, C]; labels [N] (-1 or C: background); quality [N]."""
    logits = logits.float()
    scores = logits.sigmoid()
    targets = torch.zeros_like(logits)
    pos = (labels >= 0) & (labels < logits.shape[1])
    targets[pos, labels[pos]] = quality[pos].float()
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * (scores - targets).abs().pow(beta)
    return loss.sum(dim=1)


def distribution_focal_loss(dist_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL per side [M]: cross-entropy towards the two bins around the continuous target, weighted by
    closeness. dist_logits [M, R+1]; target [M] in [0, R)."""
    left = target.long()
    right = left + 1
    weight_left = right.float() - target
    weight_right = target - left.float()
    logits = dist_logits.float()
    return (F.cross_entropy(logits, left, reduction="none") * weight_left
            + F.cross_entropy(logits, right, reduction="none") * weight_right)


def assign_targets(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                   anchor_scale: float = 8.0, topk: int = 9) -> Targets:
    """ATSS-assign each image's boxes (targets[i]["boxes"] xyxy input pixels, ["labels"]) to locations."""
    anchors = point_anchors(outputs["points"], outputs["strides"], anchor_scale)
    level_sizes = torch.unique_consecutive(outputs["strides"], return_counts=True)[1].tolist()
    return gather_targets(targets, anchors.shape[0], anchors.device,
                          lambda gt: atss_assign(anchors, level_sizes, gt, topk), outputs["points"])


def gfl_loss(outputs: dict[str, torch.Tensor], assigned: Targets,
             weights: tuple[float, float, float] = (1.0, 0.25, 2.0)) -> dict[str, torch.Tensor]:
    """The GFL terms, weighted: {'loss_qfl', 'loss_dfl', 'loss_giou'}; raw values under 'raw_*'."""
    n, a, c = outputs["cls_logits"].shape
    reg_max = outputs["bbox_dists"].shape[-1] - 1
    cls_logits = outputs["cls_logits"].reshape(n * a, c)
    bbox_dists = outputs["bbox_dists"].reshape(n * a, 4, reg_max + 1)
    strides = outputs["strides"].repeat(n)
    points = (outputs["points"] / outputs["strides"][:, None]).repeat(n, 1)  # in stride units
    pos = assigned.labels >= 0
    quality = torch.zeros(n * a, device=cls_logits.device)
    if pos.any():
        pred_dist = distribution_to_distance(bbox_dists[pos])  # [P, 4] stride units
        pred_boxes = distance_to_box(points[pos], pred_dist)
        gt_boxes = assigned.boxes[pos] / strides[pos, None]
        quality[pos] = box_iou(pred_boxes.detach(), gt_boxes).diagonal().clamp(min=0)
        weight = cls_logits[pos].detach().float().sigmoid().max(dim=1).values  # [P]
        weight_sum = max(mean_over_ranks(float(weight.sum()), weight.device), 1.0)  # as mmdet: clamp(min=1)
        giou = (generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="none") * weight).sum() / weight_sum
        target_dist = box_to_distance(points[pos], gt_boxes).clamp(min=0, max=reg_max - 0.01)  # [P, 4]
        dfl = distribution_focal_loss(bbox_dists[pos].reshape(-1, reg_max + 1), target_dist.reshape(-1))
        dfl = (dfl * weight.repeat_interleave(4)).sum() / 4.0 / weight_sum
    else:
        zero = bbox_dists.sum() * 0.0  # keeps the graph connected for DDP
        giou, dfl = zero, zero
    qfl = quality_focal_loss(cls_logits, assigned.labels, quality)
    if assigned.valid is not None:  # letterbox padding is no background to learn
        qfl = qfl * assigned.valid
    qfl = qfl.sum() / assigned.num_pos
    raw = {"qfl": qfl, "dfl": dfl, "giou": giou}
    out = {f"loss_{k}": v * w for (k, v), w in zip(raw.items(), weights)}
    out.update({f"raw_{k}": v.detach() for k, v in raw.items()})
    return out

