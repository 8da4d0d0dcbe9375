"""What every dense head shares: the conv + GroupNorm + ReLU towers, per-level learnable scales, the
location grid, initialisation, and flattening per-level maps into one [N, A, K] tensor."""

from __future__ import annotations

import math

import torch
from torch import nn


def tower(in_channels: int, channels: int, convs: int, norm_groups: int) -> nn.Sequential:
    """`convs` x (3x3 conv, GroupNorm, ReLU), as every RetinaNet-family head stacks before its outputs."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(norm_groups, channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class Scale(nn.Module):
    """A learnable scalar per level (box logits of different strides live on different scales)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def init_head(head: nn.Module, cls_out: nn.Conv2d, prior_prob: float = 0.01) -> None:
    """Convs N(0, 0.01) with zero bias; the class output starts every class at prior_prob so the sigmoid
    loss is not swamped by background at step 0 (RetinaNet's initialisation)."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.constant_(cls_out.bias, -math.log((1 - prior_prob) / prior_prob))


def flatten_level(x: torch.Tensor, per_location: int) -> torch.Tensor:
    """[N, K * per_location, H, W] -> [N, H * W * per_location, K]: location-major, then anchor."""
    n, channels, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w * per_location, channels // per_location)


def anchor_points(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device,
                  dtype: torch.dtype = torch.float32, offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Locations ((x + offset) * stride, (y + offset) * stride), level by level: [A, 2], [A]. offset 0.5
    puts them at cell centres; mmdetection's anchor generators use 0 (model.point_offset)."""
    points, all_strides = [], []
    for (h, w), stride in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + offset) * stride
        xs = (torch.arange(w, device=device, dtype=dtype) + offset) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
        all_strides.append(torch.full((h * w,), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(all_strides)


class CenternessHead(nn.Module):
    """The layers FCOS and ATSS share: class and regression towers, C class logits, 4 box values with a
    per-level scale, and a centerness logit on the regression tower (mmdet's centerness_on_reg)."""
    point_offset = 0.5  # locations at (x + point_offset) * stride; build_head sets model.point_offset

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

    def levels(self, features: list[torch.Tensor], relu: bool) -> dict[str, torch.Tensor]:
        """cls_logits [N, A, C], box [N, A, 4] (ReLU'd when `relu`), centerness [N, A], points [A, 2], strides [A]."""
        cls_all, reg_all, ctr_all, sizes = [], [], [], []
        for feat, scale in zip(features, self.scales):
            reg_feat = self.reg_tower(feat)
            box = scale(self.reg_out(reg_feat))
            cls_all.append(flatten_level(self.cls_out(self.cls_tower(feat)), 1))
            reg_all.append(flatten_level(torch.relu(box) if relu else box, 1))
            ctr_all.append(flatten_level(self.centerness_out(reg_feat), 1))
            sizes.append(tuple(feat.shape[-2:]))
        points, strides = anchor_points(sizes, self.strides, features[0].device, features[0].dtype, self.point_offset)
        return {"cls_logits": torch.cat(cls_all, 1), "box": torch.cat(reg_all, 1),
                "centerness": torch.cat(ctr_all, 1)[..., 0], "points": points, "strides": strides}
