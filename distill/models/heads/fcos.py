"""FCOS head (Tian et al., ICCV 2019), as mmdet's FCOS with norm_on_bbox and centerness on the regression
tower: per location C sigmoid class logits, 4 distances (left, top, right, bottom) in stride units
(ReLU of a per-level scaled output) and a centerness logit. Scores are sigmoid(class) x
sigmoid(centerness), as mmdet ranks FCOS and ATSS detections.

Raw outputs: cls_logits [N, A, C], distances [N, A, 4] (stride units), centerness [N, A] (logits),
points [A, 2], strides [A].
"""

from __future__ import annotations

import torch

from distill.models.heads.common import CenternessHead
from distill.models.heads.gfl import distance_to_box


class FCOSHead(CenternessHead):
    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.levels(features, relu=True)
        out["distances"] = out.pop("box")
        return out

    @staticmethod
    def distill_boxes(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoded boxes [N, A, 4] xyxy input pixels."""
        return distance_to_box(outputs["points"][None],
                               outputs["distances"].float() * outputs["strides"][None, :, None])

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = outputs["cls_logits"].float().sigmoid() * outputs["centerness"].float().sigmoid()[..., None]
        return self.distill_boxes(outputs), scores
