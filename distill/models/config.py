"""A detector's configuration: a leaf module, so heads, losses and checkpoints can type their config
without importing the detector."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    # Where a level's locations sit: (x + point_offset) * stride. 0.5 (cell centres) is edgekd's and
    # torchvision's FCOS; mmdetection's anchor generators use 0.0 (center_offset=0), so its checkpoints
    # decode right only with 0.0.
    point_offset: float = 0.5
    # P7 = conv(ReLU(P6)) as torchvision's LastLevelP6P7; mmdetection's FPN (relu_before_extra_convs=False)
    # has no ReLU there.
    relu_before_p7: bool = True
