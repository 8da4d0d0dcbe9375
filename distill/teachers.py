"""Where a teacher comes from: an edgekd checkpoint or weights file (the default), an mmdetection GFL
checkpoint (teacher.format: mmdet), or a torchvision COCO detector (teacher.source:
torchvision:<name>). Each comes back as a detector with edgekd's raw-output contract and the dataset's
classes, so the distiller and the evaluator see one kind of teacher.

A teacher trained on more classes than the dataset has (COCO's 80, say) is cut down to the dataset's,
chosen by name, in the dataset's order; a dataset class it does not know is refused by name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from deploy.errors import InputError
from distill.checkpoint import check_sha256, load_model_state
from distill.models.config import ModelConfig
from distill.models.detector import build_detector, load_detector
from distill.models.mmdet import mmdet_to_edgekd, read_mmdet_checkpoint

FORMATS = ("edgekd", "mmdet")


def class_rows(teacher_classes: list[str], dataset_classes: list[str], source: str) -> list[int]:
    """For each dataset class, the teacher's class index with that name; one line naming a class the
    teacher does not know."""
    index = {name: i for i, name in enumerate(teacher_classes)}
    missing = [c for c in dataset_classes if c not in index]
    if missing:
        raise InputError(f"{source}: the teacher does not know the dataset's class{'es' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(c) for c in missing[:3])} (it has {len(teacher_classes)}: "
                         f"{', '.join(teacher_classes[:4])}, ...); distil from a teacher trained on these classes")
    return [index[c] for c in dataset_classes]


def mmdet_teacher(path: str | Path, model: ModelConfig, dataset_classes: list[str],
                  expected_sha256: str | None = None) -> nn.Module:
    """An edgekd GFL detector holding an mmdetection GFL checkpoint's weights, cut to the dataset's classes."""
    path = Path(path)
    if model.name != "gfl":
        raise InputError(f"teacher.format: mmdet maps GFL checkpoints only; teacher.model.name is {model.name} "
                         "(mmdetection's RetinaHead has no GroupNorm where edgekd's towers have one; its ATSS and FCOS "
                         "heads are not verified against edgekd's): train that teacher with edgekd, or use GFL")
    check_sha256(path, expected_sha256, "teacher.checkpoint")  # first: a wrong file is named as such, not misread
    weights, classes = read_mmdet_checkpoint(path)
    state = mmdet_to_edgekd(weights, str(path))  # read_mmdet_checkpoint found GFL's classifier: head.cls_out
    rows = class_rows(classes, dataset_classes, str(path))
    state["head.cls_out.weight"] = state["head.cls_out.weight"][rows]
    state["head.cls_out.bias"] = state["head.cls_out.bias"][rows]
    detector = build_detector(replace(model, pretrained="none"), num_classes=len(dataset_classes))
    load_model_state(detector, state, str(path))
    return detector.eval()


def load_teacher(checkpoint: str | Path | None, fmt: str = "edgekd", source: str | None = None,
                 model: ModelConfig | None = None, dataset_classes: list[str] | None = None,
                 expected_sha256: str | None = None) -> tuple[nn.Module, list[str]]:
    """(teacher in eval mode, its classes) from the teacher settings. An edgekd file carries its own model
    config; the other kinds are built from `model` and cut to `dataset_classes`. A stated `expected_sha256`
    is checked for every kind, on torchvision's downloaded file too."""
    if source:
        from distill.models.torchvision_teacher import torchvision_teacher

        if fmt != "edgekd":
            raise InputError(f"teacher.source: {source} brings its own weights format; leave teacher.format at edgekd")
        teacher = torchvision_teacher(source, checkpoint, dataset_classes or [], model, expected_sha256)
        return teacher, list(dataset_classes or [])
    if checkpoint is None:
        raise InputError("teacher.checkpoint: no teacher to load (set a file, or teacher.source)")
    if fmt == "mmdet":
        if model is None or dataset_classes is None:
            raise InputError("teacher.format: mmdet needs teacher.model (an edgekd GFL config) and the dataset's classes")
        return mmdet_teacher(checkpoint, model, dataset_classes, expected_sha256), list(dataset_classes)
    if fmt != "edgekd":
        raise InputError(f"teacher.format: {fmt!r} unknown; valid: {', '.join(FORMATS)}")
    check_sha256(checkpoint, expected_sha256, "teacher.checkpoint")
    teacher, classes, _ = load_detector(checkpoint)
    return teacher, classes
