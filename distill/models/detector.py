"""A dense detector: backbone -> FPN (torchvision) -> a dense head (GFL, RetinaNet, FCOS, ATSS), built
from a ModelConfig."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from distill.models.backbones import build_backbone, freeze_batchnorm
from distill.models.heads import build_head


@dataclass
class ModelConfig:
    name: Literal["gfl", "retinanet", "fcos", "atss"] = "gfl"  # the head (distill/models/heads/)
    backbone: str = "efficientnet_lite0"  # see distill/models/backbones.py BACKBONES
    pretrained: str = "imagenet"  # none | imagenet | path to a .pth
    input_size: list[int] = field(default_factory=lambda: [320, 320])  # [height, width] of the model input
    fpn_channels: int = 96
    extra_levels: int = 0  # 2 adds P6/P7 (strides 64, 128) as on COCO
    head_channels: int = 96
    head_convs: int = 2  # conv + GroupNorm + ReLU layers in each tower
    norm_groups: int = 16
    reg_max: int = 16  # GFL: DFL bins per side are 0..reg_max (stride units)
    anchor_scale: float = 8.0  # GFL and ATSS: the square anchor's side = anchor_scale * stride
    atss_topk: int = 9  # GFL and ATSS assignment: candidates per level
    octave_base_scale: float = 4.0  # RetinaNet: anchor side 4 * stride * 2^(i/3), i < scales_per_octave
    scales_per_octave: int = 3  # RetinaNet: with 3 ratios, 9 anchors per location
    box_loss: Literal["smooth_l1", "giou"] = "smooth_l1"  # RetinaNet: on deltas, or GIoU on decoded boxes
    center_sampling: float = 1.5  # FCOS: positives within this many strides of a box's centre (0 = off)
    # Loss term weights; null = the head's defaults: GFL [QFL, DFL, GIoU] = [1.0, 0.25, 2.0];
    # RetinaNet [focal, box] = [1.0, 1.0]; FCOS [focal, GIoU, centerness] = [1.0, 1.0, 1.0]; ATSS [1.0, 2.0, 1.0].
    loss_weights: list[float] | None = None
    freeze_bn: bool = True  # backbone BatchNorm statistics stay at their pretrained values


class Detector(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained)
        extra = LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels) if cfg.extra_levels == 2 else None
        self.fpn = FeaturePyramidNetwork(self.backbone.channels, cfg.fpn_channels, extra_blocks=extra)
        self.strides = tuple(self.backbone.strides) + ((64, 128) if extra else ())
        self.head = build_head(cfg, num_classes, cfg.fpn_channels, self.strides)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] (deploy/preprocess.py normalisation) -> raw head outputs (see heads/)."""
        feats = self.backbone(images)
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return self.head(list(pyramid.values()))

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs -> (boxes [N, A, 4] xyxy input pixels, scores [N, A, C] probabilities)."""
        return self.head.decode(outputs)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        if mode and self.cfg.freeze_bn:
            freeze_batchnorm(self.backbone)
        return self


def build_detector(cfg: ModelConfig, num_classes: int, seed: int | None = None) -> Detector:
    """A detector for num_classes classes from its config; with a seed, its random layers (FPN, head)
    are initialised the same whatever the process drew from the RNG before."""
    if seed is not None:
        torch.manual_seed(seed)
    return Detector(cfg, num_classes)
