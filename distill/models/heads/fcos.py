"""FCOS head (Tian et al., ICCV 2019), as mmdet's FCOS with norm_on_bbox and centerness on the regression
tower: per location C sigmoid class logits, 4 distances (left, top, right, bottom) in stride units
(ReLU of a per-level scaled output) and a centerness logit. Scores are sigmoid(class) x
sigmoid(centerness), as mmdet ranks FCOS and ATSS detections.

Raw outputs: cls_logits [N, A, C], distances [N, A, 4] (stride units), centerness [N, A] (logits),
points [A, 2], strides [A].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.heads.common import Scale, anchor_points, flatten_level, init_head, tower
from distill.models.heads.gfl import distance_to_box


class FCOSHead(nn.Module):
    anchors_per_location = 1

    def __init__(self, num_classes: int, in_channels: int, channels: int = 96, convs: int = 2, norm_groups: int = 16,
                 strides: tuple[int, ...] = (8, 16, 32), prior_prob: float = 0.01):
        super().__init__()
        self.num_classes, self.strides = num_classes, tuple(strides)
        self.cls_tower = tower(in_channels, channels, convs, norm_groups)
        self.reg_tower = tower(in_channels, channels, convs, norm_groups)
        width = channels if convs else in_channels
        self.cls_out = nn.Conv2d(width, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness_out = nn.Conv2d(width, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)
        init_head(self, self.cls_out, prior_prob)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        cls_all, reg_all, ctr_all, sizes = [], [], [], []
        for feat, scale in zip(features, self.scales):
            reg_feat = self.reg_tower(feat)
            cls_all.append(flatten_level(self.cls_out(self.cls_tower(feat)), 1))
            reg_all.append(flatten_level(F.relu(scale(self.reg_out(reg_feat))), 1))
            ctr_all.append(flatten_level(self.centerness_out(reg_feat), 1))
            sizes.append(tuple(feat.shape[-2:]))
        points, strides = anchor_points(sizes, self.strides, features[0].device, features[0].dtype)
        return {"cls_logits": torch.cat(cls_all, 1), "distances": torch.cat(reg_all, 1),
                "centerness": torch.cat(ctr_all, 1)[..., 0], "points": points, "strides": strides}

    @staticmethod
    def distill_boxes(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoded boxes [N, A, 4] xyxy input pixels."""
        return distance_to_box(outputs["points"][None], outputs["distances"].float() * outputs["strides"][None, :, None])

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = outputs["cls_logits"].float().sigmoid() * outputs["centerness"].float().sigmoid()[..., None]
        return self.distill_boxes(outputs), scores
