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

import math

import torch
import torch.nn.functional as F
from torch import nn


def _tower(in_channels: int, channels: int, convs: int, norm_groups: int) -> nn.Sequential:
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


class GFLHead(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, channels: int = 96, convs: int = 2,
                 norm_groups: int = 16, reg_max: int = 16, strides: tuple[int, ...] = (8, 16, 32),
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.cls_tower = _tower(in_channels, channels, convs, norm_groups)
        self.reg_tower = _tower(in_channels, channels, convs, norm_groups)
        width = channels if convs else in_channels
        self.cls_out = nn.Conv2d(width, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(width, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start every class at prior_prob so the sigmoid loss is not swamped by background at step 0.
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        cls_all, reg_all, sizes = [], [], []
        for feat, scale in zip(features, self.scales):
            n, _, h, w = feat.shape
            cls = self.cls_out(self.cls_tower(feat))  # [N, C, H, W]
            reg = scale(self.reg_out(self.reg_tower(feat)))  # [N, 4*(R+1), H, W]
            cls_all.append(cls.permute(0, 2, 3, 1).reshape(n, h * w, self.num_classes))
            reg_all.append(reg.permute(0, 2, 3, 1).reshape(n, h * w, 4, self.reg_max + 1))
            sizes.append((h, w))
        points, strides = anchor_points(sizes, self.strides, features[0].device, features[0].dtype)
        return {"cls_logits": torch.cat(cls_all, 1), "bbox_dists": torch.cat(reg_all, 1),
                "points": points, "strides": strides}


def anchor_points(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ((x + 0.5) * stride, (y + 0.5) * stride) of every location, level by level: [A, 2], [A]."""
    points, all_strides = [], []
    for (h, w), stride in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
        all_strides.append(torch.full((h * w,), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(all_strides)


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
