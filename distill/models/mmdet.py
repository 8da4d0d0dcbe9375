"""mmdetection checkpoints as edgekd teachers (teacher.format: mmdet): a GFL checkpoint's state dict
renamed onto edgekd's GFL (ResNet body, torchvision FPN with P6/P7 on P5, GroupNorm towers), and its
classes from the checkpoint's meta.

The structure maps one to one; what differs is named in the model config, not hidden here: mmdetection
places locations at x * stride (model.point_offset: 0.0) and applies no ReLU before P7
(model.relu_before_p7: false); configs/models/gfl_r101_mmdet.yaml sets both. Key names follow
mmdetection 2.x and 3.x alike (mmdet/models/necks/fpn.py: lateral_convs, fpn_convs; mmdet/models/
dense_heads/gfl_head.py: cls_convs, reg_convs, gfl_cls, gfl_reg, scales; ConvModule's conv and gn).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from deploy.errors import InputError

# mmdetection key pattern -> edgekd key (edgekd's towers are Sequential(conv, GroupNorm, ReLU) x convs).
RULES: list[tuple[str, Any]] = [
    (r"backbone\.(.+)", lambda m: f"backbone.body.{m[1]}"),
    (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", lambda m: f"fpn.inner_blocks.{m[1]}.0.{m[2]}"),
    (r"neck\.fpn_convs\.([0-2])\.conv\.(weight|bias)", lambda m: f"fpn.layer_blocks.{m[1]}.0.{m[2]}"),
    (r"neck\.fpn_convs\.3\.conv\.(weight|bias)", lambda m: f"fpn.extra_blocks.p6.{m[1]}"),
    (r"neck\.fpn_convs\.4\.conv\.(weight|bias)", lambda m: f"fpn.extra_blocks.p7.{m[1]}"),
    (r"bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.weight", lambda m: f"head.{m[1]}_tower.{3 * int(m[2])}.weight"),
    (r"bbox_head\.(cls|reg)_convs\.(\d+)\.gn\.(weight|bias)", lambda m: f"head.{m[1]}_tower.{3 * int(m[2]) + 1}.{m[3]}"),
    (r"bbox_head\.gfl_cls\.(weight|bias)", lambda m: f"head.cls_out.{m[1]}"),
    (r"bbox_head\.gfl_reg\.(weight|bias)", lambda m: f"head.reg_out.{m[1]}"),
    (r"bbox_head\.scales\.(\d+)\.scale", lambda m: f"head.scales.{m[1]}.scale"),
]
DROPPED = ("bbox_head.integral.project",)  # GFL's integral bins 0..reg_max: a constant edgekd computes
CONVERT = ("convert it where mmengine is installed: python -m pipeline.tools.convert_mmdet {path} --out plain.pth "
           "(edgekd convert-mmdet; it writes the state dict and classes only)")


def map_key(key: str) -> str | None:
    """The edgekd key for an mmdetection GFL key, or None when its structure has no counterpart."""
    for pattern, target in RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return target(match)
    return None


def mmdet_to_edgekd(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """An mmdetection GFL state dict renamed onto edgekd's GFL; one InputError naming the first keys that
    do not map (deformable convolutions, another head)."""
    mapped, unmapped = {}, []  # (DCN's offsets would rename cleanly, then fail the load less clearly)
    for key, value in state.items():
        if key in DROPPED:
            continue
        target = None if "conv_offset" in key else map_key(key)  # conv_offset: a deformable convolution's
        if target is None:
            unmapped.append(key)
        else:
            mapped[target] = value
    if unmapped:
        raise InputError(f"{source}: {len(unmapped)} mmdetection keys have no counterpart in edgekd's GFL (first: "
                         f"{', '.join(unmapped[:3])}); only GFL with a torchvision-style ResNet body, FPN and "
                         "GroupNorm towers maps (no DCN, no other heads)")
    return mapped


def read_mmdet_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict, classes) of an mmdetection checkpoint, read with weights_only=True: classes from
    meta['CLASSES'] (2.x) or meta['dataset_meta']['classes'] (3.x)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"teacher.checkpoint: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  an mmengine checkpoint pickles its own objects (message_hub, ...)
        first = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not readable with weights_only=True ({first}); {CONVERT.format(path=path)}") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a checkpoint dict; {CONVERT.format(path=path)}")
    weights = state.get("state_dict", state)
    meta = state.get("meta") or {}
    classes = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if not classes:
        raise InputError(f"{path}: its meta holds no classes (meta.CLASSES in mmdetection 2.x, "
                         "meta.dataset_meta.classes in 3.x); write them in with the converter")
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise InputError(f"{path}: its state_dict holds other objects than tensors; {CONVERT.format(path=path)}")
    return dict(weights), [str(c) for c in classes]
