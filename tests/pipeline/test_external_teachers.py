"""Teachers from elsewhere through the pipeline's own commands: an mmdetection GFL checkpoint (teacher
stage evaluates it, the distill stage distils from it), and the one-line refusals."""
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

from distill.models.detector import ModelConfig, build_detector
from tests.conftest import REPO
from tests.distill.test_mmdet import mmdet_names

TEACHER = {"name": "gfl", "backbone": "resnet18", "pretrained": "none", "input_size": [128, 128], "fpn_channels": 32,
           "extra_levels": 2, "head_channels": 32, "head_convs": 1, "norm_groups": 8, "point_offset": 0.0,
           "relu_before_p7": False}
STUDENT = {**TEACHER, "backbone": "efficientnet_lite0", "fpn_channels": 16, "head_channels": 16, "norm_groups": 4}
TRAIN = {"max_steps": 2, "batch_size": 4, "workers": 0, "max_train_images": 0, "log_every": 1}


def run(module, args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, "--no-progress", *args], capture_output=True, text=True,
                          cwd=REPO, env=env)


def overrides(prefix, values):
    return [f"{prefix}.{k}={json.dumps(v)}" for k, v in values.items()]


@pytest.mark.slow
def test_an_mmdetection_teacher_is_evaluated_and_distilled_from(tiny_scenes, tiny_splits, tmp_path):
    classes = tiny_splits[0].class_names
    torch.manual_seed(0)
    # mmdetection's checkpoint, its classes in another order and one more: the teacher is cut by name
    theirs = ["Extra", *reversed(classes)]
    state = mmdet_names(build_detector(ModelConfig(**TEACHER), len(theirs)).state_dict(), 1)
    path = tmp_path / "gfl_mmdet.pth"
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": theirs}}}, path)
    common = [f"data.root={tiny_scenes}", "data.generator.size=tiny", f"runs_dir={tmp_path}",
              "teacher.format=mmdet", f"teacher.checkpoint={path}", "teacher.checkpoint_sha256=null",
              *overrides("teacher.model", TEACHER)]
    proc = run("pipeline.stages.train", ["--role", "teacher", *common], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher (from" in proc.stdout and "mmdet" in proc.stdout
    assert (tmp_path / "default" / "teacher" / "metrics.json").is_file()
    train = TRAIN
    proc = run("pipeline.stages.distill", [*common, *overrides("student.model", STUDENT),
                                           *overrides("student.train", train)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "default" / "distill" / "log.jsonl").read_text().splitlines()]
    assert log[0]["raw_bckd_cls"] > 0 and log[0]["raw_bckd_loc"] > 0
    assert torch.load(tmp_path / "default" / "distill" / "last.pt", weights_only=True)["teacher"] == str(path)


@pytest.mark.slow
def test_a_dataset_class_outside_coco_is_one_line(tiny_scenes, tmp_path):
    common = [f"data.root={tiny_scenes}", "data.generator.size=tiny", f"runs_dir={tmp_path}",
              "teacher.source=torchvision:fcos_resnet50_fpn", "teacher.model.input_size=[128,128]"]
    proc = run("pipeline.stages.train", ["--role", "teacher", *common], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: teacher.source: torchvision:fcos_resnet50_fpn "
                                  "knows COCO's 80 classes, not 'T-shirt/top'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_converter_keeps_its_input_and_refuses_what_it_cannot_convert(tmp_path, monkeypatch, capsys):
    from pipeline.tools.convert_mmdet import main

    monkeypatch.setitem(sys.modules, "mmengine", types.ModuleType("mmengine"))  # only importable, never called here
    monkeypatch.chdir(tmp_path)
    state = mmdet_names(build_detector(ModelConfig(**TEACHER), 10).state_dict(), 1)
    ten = [f"c{i}" for i in range(10)]
    torch.save({"state_dict": state, "meta": {"CLASSES": ten}}, tmp_path / "self.pth")
    original = (tmp_path / "self.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(original[: len(original) // 2])
    (tmp_path / "text.pth").write_text("a text file\n")
    (tmp_path / "sub").mkdir()
    cases = [
        (["self.pth", "--out", "self.pth", "--classes", "a,b"], r"--out self.pth: is the checkpoint being converted"),
        (["self.pth", "--out", "sub/../self.pth"], r"--out sub/../self.pth: is the checkpoint being converted"),
        (["self.pth", "--out", "o.pth", "--classes", "a,b"],
         r"self.pth: --classes names 2 classes, its head \(bbox_head.gfl_cls.weight\) has 10 rows"),
        (["truncated.pth", "--out", "o.pth"], r"truncated.pth: truncated or damaged \(its zip directory is missing\)"),
        (["text.pth", "--out", "o.pth"], r"text.pth: not a PyTorch file"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert re.match(rf"error: {message}", err) and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "self.pth").read_bytes() == original and not (tmp_path / "o.pth").exists()
    assert main(["self.pth", "--out", "o.pth"]) == 0
    converted = torch.load(tmp_path / "o.pth", weights_only=True)
    assert converted["meta"]["classes"] == ten and converted["state_dict"].keys() == state.keys()
