"""A tiny whole pipeline through the CLI: every stage that exists, its files, and a rerun that resumes."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SMALL = {"input_size": "[128,128]", "fpn_channels": 32, "head_convs": 1, "backbone": "efficientnet_lite0"}
SHORT = {"max_steps": 3, "batch_size": 4, "workers": 0, "max_train_images": 0}
TINY = ["data.generator.size=tiny", "stages=[data,teacher,distill]",
        *(f"{role}.model.{k}={v}" for role in ("teacher", "student") for k, v in SMALL.items()),
        "teacher.model.head_channels=32", "student.model.head_channels=16",
        *(f"{role}.train.{k}={v}" for role in ("teacher", "student") for k, v in SHORT.items())]


def test_tiny_pipeline_runs_every_stage_and_resumes(tiny_scenes, tmp_path):
    cmd = [sys.executable, "-m", "pipeline", "run", "--no-progress", f"data.root={tiny_scenes}",
           f"runs_dir={tmp_path}", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "default"
    assert "[data] done" in first.stdout and "[teacher] done" in first.stdout and "[distill] done" in first.stdout
    for stage in ("data", "teacher", "distill"):
        assert json.loads((run / stage / "stage.json").read_text())["stage"] == stage
    for stage in ("teacher", "distill"):
        assert json.loads((run / stage / "metrics.json").read_text())["num_images"] == 24
    assert json.loads((run / "teacher" / "predictions.json").read_text()) is not None
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 0 and "already trained" in again.stdout
