"""The one way a teacher is loaded, whatever it is: an edgekd checkpoint or weights file (the default), an
mmdetection GFL checkpoint (teacher.format: mmdet), or a torchvision COCO detector (teacher.source:
torchvision:<name>). Each comes back as a detector with edgekd's raw-output contract and the dataset's
classes, so the distiller and the evaluator see one kind of teacher, with a TeacherInfo saying what it is.

The checks run here, once per load: the stated hash (teacher.checkpoint_sha256, for the file
teacher.checkpoint names), the classes, the architecture where asked, the preprocessing. An mmdetection
or torchvision teacher trained on more classes than the dataset has (COCO's 80, say) is cut down to the
dataset's, chosen by name, in the dataset's order; a dataset class it does not know is refused by name.
An edgekd file must hold the dataset's classes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from deploy.errors import InputError
from deploy.files import sha256_file
from distill.checkpoint import check_sha256, load_model_state
from distill.models.config import ModelConfig
from distill.models.detector import build_detector, load_detector
from distill.models.mmdet import mmdet_to_edgekd, read_mmdet_checkpoint
from distill.weights_file import check_architecture, check_preprocessing
from pipeline import paths
from pipeline.config import external_teacher

if TYPE_CHECKING:
    from distill.models.torchvision_teacher import TorchvisionConfig
    from pipeline.config import PipelineConfig, RoleConfig

FORMATS = ("edgekd", "mmdet")
SETTING = "teacher.checkpoint"


@dataclass(frozen=True)
class TeacherInfo:
    """What callers need of a loaded teacher besides the module itself."""

    classes: list[str]  # its output classes, in order: the dataset's (an external teacher is cut to them)
    source: str  # what it came from, as runs record it: teacher.source, else the file's path
    kind: str  # edgekd, mmdet or torchvision
    sha256: str  # of the weights file read; equal to teacher.checkpoint_sha256 wherever that applied
    architecture: ModelConfig | TorchvisionConfig  # what it was built from (the module's .cfg)


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


def load_teacher(cfg: PipelineConfig, dataset_classes: list[str], path_override: str | Path | None = None, *,
                 check_model: bool = False) -> tuple[nn.Module, TeacherInfo]:
    """(teacher in eval mode, what it is) as cfg.teacher describes it. path_override (--teacher, the
    ablation's teacher) names an edgekd file, read as one whatever teacher.source and teacher.format say;
    without it, an edgekd teacher is teacher.checkpoint, else what the teacher stage trained.

    An edgekd file carries its own model config; check_model also holds it to teacher.model's architecture
    (the teacher stage, which reports the configured teacher; a student distils from the file as it is)."""
    t = cfg.teacher
    if path_override is None and external_teacher(t):
        return _external_teacher(t, dataset_classes)
    return _edgekd_teacher(cfg, dataset_classes, path_override, check_model)


def _edgekd_teacher(cfg: PipelineConfig, dataset_classes: list[str], path_override: str | Path | None,
                    check_model: bool) -> tuple[nn.Module, TeacherInfo]:
    configured = path_override is None and bool(cfg.teacher.checkpoint)  # the stated hash is that file's only
    path = paths.teacher_checkpoint(cfg, path_override)
    if not path.is_file():
        raise InputError(f"{SETTING}: {path} not found (set {SETTING}: null to train one)" if configured else
                         f"teacher checkpoint not found: {path} (run `make teacher` first, or pass TEACHER=path)")
    stated = cfg.teacher.checkpoint_sha256 if configured else None
    check_sha256(path, stated, SETTING)  # first: a wrong file is named as such, not misread
    teacher, classes, state = load_detector(path)
    if classes != list(dataset_classes):
        raise InputError(f"{path}: teacher classes {classes[:4]}... differ from the dataset's "
                         f"{list(dataset_classes)[:4]}... ({len(classes)} vs {len(dataset_classes)}): train the "
                         f"teacher on this dataset ({SETTING}=null, with teacher.train), or give one trained on these "
                         "classes")
    if check_model:
        check_architecture(path, state, cfg.teacher.model)
    check_preprocessing(path, state)
    return teacher, _info(teacher, classes, str(path), "edgekd", path, stated)


def _external_teacher(t: RoleConfig, dataset_classes: list[str]) -> tuple[nn.Module, TeacherInfo]:
    """An mmdetection or torchvision teacher, built from teacher.model and cut to the dataset's classes."""
    if t.source:
        from distill.models.torchvision_teacher import torchvision_teacher

        if t.format != "edgekd":
            raise InputError(f"teacher.source: {t.source} brings its own weights format; "
                             "leave teacher.format at edgekd")
        teacher = torchvision_teacher(t.source, t.checkpoint, dataset_classes, t.model, t.checkpoint_sha256)
        return teacher, _info(teacher, dataset_classes, t.source, "torchvision", teacher.cfg.weights,
                              t.checkpoint_sha256)
    if t.format != "mmdet":
        raise InputError(f"teacher.format: {t.format!r} unknown; valid: {', '.join(FORMATS)}")
    if not t.checkpoint:
        raise InputError(f"{SETTING}: no teacher to load (set a file, or teacher.source)")
    teacher = _mmdet_teacher(t.checkpoint, t.model, dataset_classes, t.checkpoint_sha256)
    return teacher, _info(teacher, dataset_classes, str(Path(t.checkpoint)), "mmdet", t.checkpoint,
                          t.checkpoint_sha256)


def _mmdet_teacher(path: str | Path, model: ModelConfig, dataset_classes: list[str],
                   expected_sha256: str | None = None) -> nn.Module:
    """An edgekd GFL detector holding an mmdetection GFL checkpoint's weights, cut to the dataset's classes."""
    path = Path(path)
    if model.name != "gfl":
        raise InputError(f"teacher.format: mmdet maps GFL checkpoints only; teacher.model.name is {model.name} "
                         "(mmdetection's RetinaHead has no GroupNorm where edgekd's towers have one; its ATSS and FCOS "
                         "heads are not verified against edgekd's): train that teacher with edgekd, or use GFL")
    check_sha256(path, expected_sha256, SETTING)  # first: a wrong file is named as such, not misread
    weights, classes = read_mmdet_checkpoint(path)
    state = mmdet_to_edgekd(weights, str(path))  # read_mmdet_checkpoint found GFL's classifier: head.cls_out
    rows = class_rows(classes, dataset_classes, str(path))
    state["head.cls_out.weight"] = state["head.cls_out.weight"][rows]
    state["head.cls_out.bias"] = state["head.cls_out.bias"][rows]
    detector = build_detector(replace(model, pretrained="none"), num_classes=len(dataset_classes))
    load_model_state(detector, state, str(path))
    return detector.eval()


def _info(teacher: nn.Module, classes: list[str], source: str, kind: str, weights: str | Path,
          stated_sha256: str | None) -> TeacherInfo:
    # A stated hash was checked against this very file by then: no second read of a large checkpoint.
    digest = stated_sha256.lower() if stated_sha256 else sha256_file(weights)
    return TeacherInfo(list(classes), source, kind, digest, teacher.cfg)
