"""ATSS head (Zhang et al., CVPR 2020), as mmdet's ATSSHead: one square anchor per location (side
anchor_scale x stride), C sigmoid class logits, 4 box deltas (RetinaNet's coding, scaled per level)
and a centerness logit. Scores are sigmoid(class) x sigmoid(centerness).

Raw outputs: cls_logits [N, A, C], deltas [N, A, 4], centerness [N, A] (logits), anchors [A, 4] xyxy
input pixels, points [A, 2], strides [A].
"""

from __future__ import annotations

import torch

from distill.models.assign import point_anchors
from distill.models.heads.common import CenternessHead
from distill.models.heads.retinanet import decode_deltas


class ATSSHead(CenternessHead):
    def __init__(self, num_classes: int, in_channels: int, channels: int = 96, convs: int = 2, norm_groups: int = 16,
                 strides: tuple[int, ...] = (8, 16, 32), anchor_scale: float = 8.0, prior_prob: float = 0.01):
        super().__init__(num_classes, in_channels, channels, convs, norm_groups, strides, prior_prob)
        self.anchor_scale = anchor_scale

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.levels(features, relu=False)
        out["deltas"] = out.pop("box")
        out["anchors"] = point_anchors(out["points"], out["strides"], self.anchor_scale)
        return out

    @staticmethod
    def distill_boxes(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoded boxes [N, A, 4] xyxy input pixels."""
        return decode_deltas(outputs["deltas"], outputs["anchors"])

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = outputs["cls_logits"].float().sigmoid() * outputs["centerness"].float().sigmoid()[..., None]
        return self.distill_boxes(outputs), scores
