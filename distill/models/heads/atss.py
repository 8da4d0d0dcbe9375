"""ATSS head (Zhang et al., CVPR 2020), as mmdet's ATSSHead: one square anchor per location (side
anchor_scale x stride), C sigmoid class logits, 4 box deltas (RetinaNet's coding, scaled per level)
and a centerness logit. Scores are sigmoid(class) x sigmoid(centerness).

Raw outputs: cls_logits [N, A, C], deltas [N, A, 4], centerness [N, A] (logits), anchors [A, 4] xyxy
input pixels, points [A, 2], strides [A].
"""

from __future__ import annotations

import torch
from torch import nn

from distill.models.assign import point_anchors
from distill.models.heads.common import Scale, anchor_points, flatten_level, init_head, tower
from distill.models.heads.retinanet import decode_deltas


class ATSSHead(nn.Module):
    anchors_per_location = 1

    def __init__(self, num_classes: int, in_channels: int, channels: int = 96, convs: int = 2, norm_groups: int = 16,
                 strides: tuple[int, ...] = (8, 16, 32), anchor_scale: float = 8.0, prior_prob: float = 0.01):
        super().__init__()
        self.num_classes, self.strides, self.anchor_scale = num_classes, tuple(strides), anchor_scale
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
            reg_all.append(flatten_level(scale(self.reg_out(reg_feat)), 1))
            ctr_all.append(flatten_level(self.centerness_out(reg_feat), 1))
            sizes.append(tuple(feat.shape[-2:]))
        points, strides = anchor_points(sizes, self.strides, features[0].device, features[0].dtype)
        return {"cls_logits": torch.cat(cls_all, 1), "deltas": torch.cat(reg_all, 1),
                "centerness": torch.cat(ctr_all, 1)[..., 0], "anchors": point_anchors(points, strides, self.anchor_scale),
                "points": points, "strides": strides}

    @staticmethod
    def distill_boxes(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoded boxes [N, A, 4] xyxy input pixels."""
        return decode_deltas(outputs["deltas"], outputs["anchors"])

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = outputs["cls_logits"].float().sigmoid() * outputs["centerness"].float().sigmoid()[..., None]
        return self.distill_boxes(outputs), scores
