"""GFL (Generalized Focal Loss V1) head: shared towers, C sigmoid class logits and 4 x (reg_max+1)
box-distribution logits per location; one anchor point per location.

Raw outputs (what losses and distillation read), flattened over levels in level order:
    cls_logits [N, A, C]  pre-sigmoid class logits
    bbox_dists [N, A, 4, reg_max+1]  logits of the distance distributions (left, top, right, bottom)
    points     [A, 2]  location centres (x, y) in input pixels
    strides    [A]     stride of each location's level
Decoding gives boxes xyxy in input pixels and sigmoid scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.heads.common import Scale, anchor_points, init_head, tower


class GFLHead(nn.Module):
    point_offset = 0.5  # locations at (x + point_offset) * stride; build_head sets model.point_offset
    anchors_per_location = 1

    def __init__(self, num_classes: int, in_channels: int, channels: int = 96, convs: int = 2,
                 norm_groups: int = 16, reg_max: int = 16, strides: tuple[int, ...] = (8, 16, 32),
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.cls_tower = tower(in_channels, channels, convs, norm_groups)
        self.reg_tower = tower(in_channels, channels, convs, norm_groups)
        width = channels if convs else in_channels
        self.cls_out = nn.Conv2d(width, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(width, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)
        init_head(self, self.cls_out, prior_prob)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        cls_all, reg_all, sizes = [], [], []
        for feat, scale in zip(features, self.scales):
            n, _, h, w = feat.shape
            cls = self.cls_out(self.cls_tower(feat))  # [N, C, H, W]
            reg = scale(self.reg_out(self.reg_tower(feat)))  # [N, 4*(R+1), H, W]
            cls_all.append(cls.permute(0, 2, 3, 1).reshape(n, h * w, self.num_classes))
            reg_all.append(reg.permute(0, 2, 3, 1).reshape(n, h * w, 4, self.reg_max + 1))
            sizes.append((h, w))
        points, strides = anchor_points(sizes, self.strides, features[0].device, features[0].dtype, self.point_offset)
        return {"cls_logits": torch.cat(cls_all, 1), "bbox_dists": torch.cat(reg_all, 1),
                "points": points, "strides": strides}

    @staticmethod
    def decode(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return decode(outputs)

    @staticmethod
    def distill_boxes(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoded boxes [N, A, 4] xyxy in stride units, as GFL's own loss and BCKD's official code decode."""
        points = outputs["points"] / outputs["strides"][:, None]
        return distance_to_box(points[None], distribution_to_distance(outputs["bbox_dists"]))


def distribution_to_distance(bbox_dists: torch.Tensor) -> torch.Tensor:
    """[..., 4, R+1] logits -> [..., 4] expected distances in bins (stride units): the DFL integral."""
    bins = torch.arange(bbox_dists.shape[-1], device=bbox_dists.device, dtype=torch.float32)
    return (F.softmax(bbox_dists.float(), dim=-1) * bins).sum(-1)


def distance_to_box(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Points [..., 2] and (left, top, right, bottom) distances [..., 4] -> boxes xyxy [..., 4]."""
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def box_to_distance(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Points [..., 2] and xyxy boxes [..., 4] -> (left, top, right, bottom) distances [..., 4]."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def decode(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw head outputs -> (boxes [N, A, 4] xyxy input pixels, scores [N, A, C] sigmoid probabilities)."""
    distances = distribution_to_distance(outputs["bbox_dists"]) * outputs["strides"][None, :, None]
    boxes = distance_to_box(outputs["points"][None], distances)
    return boxes, outputs["cls_logits"].float().sigmoid()
