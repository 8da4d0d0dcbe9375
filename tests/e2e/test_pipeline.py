"""A tiny whole pipeline through the CLI: every stage that exists, its files, and a rerun that resumes."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SMALL = {"input_size": "[128,128]", "fpn_channels": 32, "head_convs": 1, "backbone": "efficientnet_lite0"}
SHORT = {"max_steps": 3, "batch_size": 4, "workers": 0, "max_train_images": 0}
TINY = ["data.generator.size=tiny", "stages=[data,teacher,distill,export,quantize]",
        "quantize.calib_images=16", "export.warmup=1", "export.iters=5",
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
    for stage in ("data", "teacher", "distill", "export", "quantize"):
        assert f"[{stage}] done" in first.stdout
        assert json.loads((run / stage / "stage.json").read_text())["stage"] == stage
    for stage in ("teacher", "distill"):
        assert json.loads((run / stage / "metrics.json").read_text())["num_images"] == 24
    assert json.loads((run / "teacher" / "predictions.json").read_text()) is not None
    exported = json.loads((run / "export" / "metrics.json").read_text())
    assert exported["parity"]["scores_max_abs"] <= 1e-4 and exported["onnxruntime_fp32"]["num_images"] == 24
    quantized = json.loads((run / "quantize" / "metrics.json").read_text())["artifacts"]
    assert set(quantized) == {"onnxruntime_int8", "openvino_fp32", "openvino_fp16", "openvino_int8"}
    assert [quantized[a]["precision"] for a in sorted(quantized)] == ["int8", "fp16", "fp32", "int8"]
    for name in ("model.int8.onnx", "openvino/model_int8.xml", "openvino/model_int8.bin", "table.md"):
        assert (run / "quantize" / name).is_file()
    again = subprocess.run([*cmd, "--stages", "teacher,distill"], capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 0 and "already trained" in again.stdout
