"""RetinaNet head (Lin et al., ICCV 2017): 9 anchors per location (3 octave scales x 3 aspect ratios),
C sigmoid class logits and 4 box deltas per anchor, deltas coded as mmdet's (means 0, stds 0.1, 0.1,
0.2, 0.2), which is torchvision's BoxCoder with weights (10, 10, 5, 5).

Raw outputs, flattened over levels, locations, then anchors (A = locations x anchors per location):
    cls_logits [N, A, C], deltas [N, A, 4], anchors [A, 4] xyxy input pixels,
    points [A, 2] and strides [A] of each anchor's location.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder

from distill.models.heads.common import anchor_points, flatten_level, init_head, tower

BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
RATIOS = (0.5, 1.0, 2.0)  # height / width


def anchor_shapes(stride: int, octave_base_scale: float = 4.0, scales_per_octave: int = 3,
                  ratios: tuple[float, ...] = RATIOS) -> torch.Tensor:
    """(width, height) of the anchors at one level [S * R, 2], ratio-major as mmdet orders them: each
    has the area of a square of side octave_base_scale * stride * 2^(i / scales_per_octave)."""
    sides = torch.tensor([octave_base_scale * stride * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
    shapes = []
    for ratio in ratios:
        h_ratio = ratio ** 0.5
        shapes += [torch.stack([sides / h_ratio, sides * h_ratio], dim=1)]
    return torch.cat(shapes)


def level_anchors(points: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """Anchors [P * K, 4] xyxy: the K (width, height) shapes centred on each of one level's P points,
    point-major (the order flatten_level gives the outputs)."""
    wh = shapes.to(points)[None].expand(points.shape[0], -1, -1)  # [P, K, 2]
    centres = points[:, None, :].expand_as(wh)
    return torch.cat([centres - wh / 2, centres + wh / 2], dim=-1).reshape(-1, 4)


class RetinaNetHead(nn.Module):
    point_offset = 0.5  # locations at (x + point_offset) * stride; build_head sets model.point_offset
    def __init__(self, num_classes: int, in_channels: int, channels: int = 96, convs: int = 2, norm_groups: int = 16,
                 strides: tuple[int, ...] = (8, 16, 32), octave_base_scale: float = 4.0, scales_per_octave: int = 3,
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_classes, self.strides = num_classes, tuple(strides)
        self.shapes = {s: anchor_shapes(s, octave_base_scale, scales_per_octave) for s in self.strides}
        self.anchors_per_location = k = scales_per_octave * len(RATIOS)
        self.cls_tower = tower(in_channels, channels, convs, norm_groups)
        self.reg_tower = tower(in_channels, channels, convs, norm_groups)
        width = channels if convs else in_channels
        self.cls_out = nn.Conv2d(width, num_classes * k, 3, padding=1)
        self.reg_out = nn.Conv2d(width, 4 * k, 3, padding=1)
        init_head(self, self.cls_out, prior_prob)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        k = self.anchors_per_location
        cls_all, reg_all, sizes = [], [], []
        for feat in features:
            cls_all.append(flatten_level(self.cls_out(self.cls_tower(feat)), k))
            reg_all.append(flatten_level(self.reg_out(self.reg_tower(feat)), k))
            sizes.append(tuple(feat.shape[-2:]))
        points, strides = anchor_points(sizes, self.strides, features[0].device, features[0].dtype, self.point_offset)
        per_level = [h * w for h, w in sizes]
        anchors = torch.cat([level_anchors(p, self.shapes[s])
                             for p, s in zip(points.split(per_level), self.strides)])
        return {"cls_logits": torch.cat(cls_all, 1), "deltas": torch.cat(reg_all, 1), "anchors": anchors,
                "points": points.repeat_interleave(k, 0), "strides": strides.repeat_interleave(k)}

    @staticmethod
    def distill_boxes(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoded boxes [N, A, 4] xyxy input pixels."""
        return decode_deltas(outputs["deltas"], outputs["anchors"])

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes [N, A, 4] xyxy input pixels, scores [N, A, C] sigmoid)."""
        return self.distill_boxes(outputs), outputs["cls_logits"].float().sigmoid()


def decode_deltas(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Deltas [N, A, 4] on anchors [A, 4] -> boxes [N, A, 4] xyxy (torchvision's BoxCoder, clipped exp)."""
    n, a, _ = deltas.shape
    boxes = BOX_CODER.decode_single(deltas.float().reshape(n * a, 4), anchors.float().repeat(n, 1))
    return boxes.reshape(n, a, 4)
