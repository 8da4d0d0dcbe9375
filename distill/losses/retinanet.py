"""RetinaNet's losses: max-IoU assignment (positive at IoU >= 0.5, background below 0.4, ignored
between; each box also keeps its best anchors), sigmoid focal loss (alpha 0.25, gamma 2) over every
non-ignored anchor, and a box loss on positives: smooth-L1 on the deltas or GIoU on decoded boxes.
Both divided by the number of positives. torchvision's Matcher, BoxCoder and focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou, generalized_box_iou_loss

from distill.losses.targets import Targets, focal_loss, gather_targets
from distill.models.heads.retinanet import BOX_CODER, decode_deltas

MATCHER = Matcher(high_threshold=0.5, low_threshold=0.4, allow_low_quality_matches=True)


def max_iou_assign(anchors: torch.Tensor, gt_boxes: torch.Tensor, matcher: Matcher = MATCHER) -> torch.Tensor:
    """Index of the matched box per anchor [A]: >= 0 positive, -1 background, -2 ignored."""
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    return matcher(box_iou(gt_boxes.float(), anchors.float()))


def assign_targets(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> Targets:
    anchors = outputs["anchors"]
    return gather_targets(targets, anchors.shape[0], anchors.device, lambda gt: max_iou_assign(anchors, gt),
                          (anchors[:, :2] + anchors[:, 2:]) / 2)


def retinanet_loss(outputs: dict[str, torch.Tensor], assigned: Targets, weights: tuple[float, float] = (1.0, 1.0),
                   box_loss: str = "smooth_l1") -> dict[str, torch.Tensor]:
    """{'loss_focal', 'loss_box'} weighted; raw values under 'raw_*'."""
    n, a, c = outputs["cls_logits"].shape
    pos = assigned.labels >= 0
    focal = focal_loss(outputs["cls_logits"].reshape(n * a, c), assigned.labels,
                       valid=assigned.valid) / assigned.num_pos
    deltas = outputs["deltas"].reshape(n * a, 4).float()
    if pos.any():
        anchors = outputs["anchors"].repeat(n, 1)[pos]
        if box_loss == "giou":
            boxes = decode_deltas(deltas[pos][None], anchors)[0]
            box = generalized_box_iou_loss(boxes, assigned.boxes[pos], reduction="sum") / assigned.num_pos
        else:
            target = BOX_CODER.encode_single(assigned.boxes[pos], anchors)
            box = F.smooth_l1_loss(deltas[pos], target, beta=1 / 9, reduction="sum") / assigned.num_pos
    else:
        box = deltas.sum() * 0.0  # keeps the graph connected for DDP
    raw = {"focal": focal, "box": box}
    out = {f"loss_{k}": v * w for (k, v), w in zip(raw.items(), weights)}
    out.update({f"raw_{k}": v.detach() for k, v in raw.items()})
    return out
