"""Dense detection heads. Every head returns a dict with at least
    cls_logits [N, A, C] pre-sigmoid class logits, one row per anchor (A = locations x anchors per location)
    points [A, 2], strides [A]  the location (x, y) and level stride of each row
and has `anchors_per_location`, `decode(outputs) -> (boxes [N, A, 4] xyxy input pixels, scores [N, A, C])`
and `distill_boxes(outputs) -> [N, A, 4]` xyxy boxes in one consistent unit, so that BCKD's
classification and IoU-localization terms apply to every head unchanged."""

from __future__ import annotations

from torch import nn

from distill.models.heads.atss import ATSSHead
from distill.models.heads.fcos import FCOSHead
from distill.models.heads.gfl import GFLHead
from distill.models.heads.retinanet import RetinaNetHead

HEAD_NAMES = ("gfl", "retinanet", "fcos", "atss")


def build_head(cfg, num_classes: int, in_channels: int, strides: tuple[int, ...]) -> nn.Module:
    """The head `cfg.name` names (a distill.models.detector.ModelConfig)."""
    common = {"num_classes": num_classes, "in_channels": in_channels, "channels": cfg.head_channels,
              "convs": cfg.head_convs, "norm_groups": cfg.norm_groups, "strides": strides}
    if cfg.name == "gfl":
        head = GFLHead(reg_max=cfg.reg_max, **common)
    elif cfg.name == "retinanet":
        head = RetinaNetHead(octave_base_scale=cfg.octave_base_scale, scales_per_octave=cfg.scales_per_octave, **common)
    elif cfg.name == "fcos":
        head = FCOSHead(**common)
    elif cfg.name == "atss":
        head = ATSSHead(anchor_scale=cfg.anchor_scale, **common)
    else:
        raise ValueError(f"model.name: unknown head '{cfg.name}'; valid: {', '.join(HEAD_NAMES)}")
    head.point_offset = cfg.point_offset  # read by forward's anchor_points: not a parameter or buffer
    return head
