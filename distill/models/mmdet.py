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

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from deploy.errors import InputError
from distill.checkpoint import error_line, file_damage

# mmdetection key pattern -> edgekd key (edgekd's towers are Sequential(conv, GroupNorm, ReLU) x convs).
RULES: list[tuple[str, Any]] = [
    (r"backbone\.(.+)", lambda m: f"backbone.body.{m[1]}"),
    (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", lambda m: f"fpn.inner_blocks.{m[1]}.0.{m[2]}"),
    (r"neck\.fpn_convs\.([0-2])\.conv\.(weight|bias)", lambda m: f"fpn.layer_blocks.{m[1]}.0.{m[2]}"),
    (r"neck\.fpn_convs\.3\.conv\.(weight|bias)", lambda m: f"fpn.extra_blocks.p6.{m[1]}"),
    (r"neck\.fpn_convs\.4\.conv\.(weight|bias)", lambda m: f"fpn.extra_blocks.p7.{m[1]}"),
    (r"bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.weight", lambda m: f"head.{m[1]}_tower.{3 * int(m[2])}.weight"),
    (r"bbox_head\.(cls|reg)_convs\.(\d+)\.gn\.(weight|bias)",
     lambda m: f"head.{m[1]}_tower.{3 * int(m[2]) + 1}.{m[3]}"),
    (r"bbox_head\.gfl_cls\.(weight|bias)", lambda m: f"head.cls_out.{m[1]}"),
    (r"bbox_head\.gfl_reg\.(weight|bias)", lambda m: f"head.reg_out.{m[1]}"),
    (r"bbox_head\.scales\.(\d+)\.scale", lambda m: f"head.scales.{m[1]}.scale"),
]
CLASSIFIER = "bbox_head.gfl_cls.weight"  # [classes, C, 3, 3]: GFL's sigmoid classifier, one row per class
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


def head_classes(weights: dict[str, torch.Tensor], classes: list[str], source: str, named_by: str) -> None:
    """GFL's classifier must be there, with one row per class: a backbone alone, or class names that miscount
    the head, is refused in one line (`named_by` says where the names came from)."""
    head = weights.get(CLASSIFIER)
    if not torch.is_tensor(head):
        first = ", ".join(list(weights)[:2]) or "none"
        raise InputError(f"{source}: no GFL classifier ({CLASSIFIER}; its {len(weights)} tensors start {first}): "
                         "teacher.format: mmdet takes a whole mmdetection GFL detector's checkpoint, not a backbone's")
    if head.shape[0] != len(classes):
        raise InputError(f"{source}: {named_by} names {len(classes)} classes, its head "
                         f"({CLASSIFIER}) has {head.shape[0]} rows; name exactly {head.shape[0]} "
                         f"(edgekd convert-mmdet {source} --out plain.pth --classes ...)")


def read_mmdet_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict, classes) of an mmdetection checkpoint, read with weights_only=True: classes from
    meta['CLASSES'] (2.x) or meta['dataset_meta']['classes'] (3.x), as many as GFL's classifier has rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"teacher.checkpoint: {path} not found")
    damage = file_damage(path)
    if damage:  # before torch.load, whose errors would read as pickled objects the converter could fix
        raise InputError(f"{path}: {damage}; the converter cannot read it either: download or copy it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # an mmengine checkpoint pickles its own objects (message_hub, ...)
        raise InputError(f"{path}: not readable with weights_only=True ({error_line(e)}); "
                         f"{CONVERT.format(path=path)}") from e
    except Exception as e:  # noqa: BLE001  a zip or pickle cut short inside
        raise InputError(f"{path}: truncated or damaged ({error_line(e)}); download or copy it again") from e
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict (state_dict and meta); "
                         "give the mmdetection checkpoint itself")
    if "model" in state and "config" in state:  # distill/checkpoint.py's layout
        raise InputError(f"{path}: an edgekd checkpoint (it has 'model' and 'config'), not an mmdetection one; "
                         "set teacher.format: edgekd")
    weights = state.get("state_dict", state)
    meta = state.get("meta") or {}
    classes = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if not classes:
        raise InputError(f"{path}: its meta holds no classes (meta.CLASSES in mmdetection 2.x, "
                         "meta.dataset_meta.classes in 3.x); write them in with the converter")
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise InputError(f"{path}: its state_dict holds other objects than tensors; {CONVERT.format(path=path)}")
    classes = [str(c) for c in classes]
    head_classes(weights, classes, str(path), "its meta")
    return dict(weights), classes
