"""load_teacher's edgekd route: which file it reads, the checks it makes there, and what it says it loaded."""

from dataclasses import asdict, replace

import pytest

from deploy.errors import InputError
from deploy.files import sha256_file
from distill.checkpoint import save_checkpoint
from distill.models.detector import build_detector
from distill.teachers import load_teacher
from distill.weights_file import PREPROCESS
from tests.distill.test_mmdet import SMALL, teacher_config


def test_an_edgekd_file_is_checked_once_and_described(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, {"model": build_detector(SMALL, 2).state_dict(), "config": asdict(SMALL),
                           "classes": ["a", "b"]})
    teacher, info = load_teacher(teacher_config(path, model=SMALL, sha256=sha256_file(path)), ["a", "b"])
    assert (info.classes, info.source, info.kind, info.sha256) == (["a", "b"], str(path), "edgekd", sha256_file(path))
    assert info.architecture == teacher.cfg and not teacher.training
    with pytest.raises(InputError, match=r"t.pt: teacher classes \['a', 'b'\]... differ "
                                         r"from the dataset's \['b', 'a'\]"):
        load_teacher(teacher_config(path, model=SMALL), ["b", "a"])
    # teacher.model matters to the teacher stage only (check_model); a student distils from the file as it is
    wider = teacher_config(path, model=replace(SMALL, head_channels=64))
    assert load_teacher(wider, ["a", "b"])[1].architecture.head_channels == SMALL.head_channels
    with pytest.raises(InputError, match=r"architecture differs from the model config: head_channels: 32 there vs 64"):
        load_teacher(wider, ["a", "b"], check_model=True)
    bgr = tmp_path / "bgr.pt"
    save_checkpoint(bgr, {"model": build_detector(SMALL, 2).state_dict(), "config": asdict(SMALL),
                          "classes": ["a", "b"], "preprocess": {**PREPROCESS, "color": "BGR"}})
    with pytest.raises(InputError, match=r"bgr.pt: saved with other preprocessing"):
        load_teacher(teacher_config(bgr, model=SMALL), ["a", "b"])


def test_which_file_and_which_hash(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, {"model": build_detector(SMALL, 2).state_dict(), "config": asdict(SMALL),
                           "classes": ["a", "b"]})
    # a file given in place of the configured teacher is read as edgekd, without the configured file's hash
    cfg = teacher_config(tmp_path / "configured.pth", "mmdet", SMALL, "0" * 64)
    assert load_teacher(cfg, ["a", "b"], path)[1].source == str(path)
    with pytest.raises(InputError, match=r"teacher.checkpoint: .*gone.pt not found \(set teacher.checkpoint: null"):
        load_teacher(teacher_config(tmp_path / "gone.pt"), ["a"])
    trained = replace(teacher_config(None), runs_dir=str(tmp_path))  # nothing configured: the teacher stage's
    with pytest.raises(InputError, match=r"teacher checkpoint not found: "
                                         r".*default/teacher/last.pt \(run `make teacher`"):
        load_teacher(trained, ["a"])
