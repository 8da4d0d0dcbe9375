"""The tiny whole pipeline through the CLI: every stage and the report, a rerun that skips everything,
a changed setting that reruns only what follows it, a gate that stops it, and a SIGTERM mid-training
followed by a resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import openvino as ov
import pytest

from deploy.qdq_check import check_tensorrt_qdq
from deploy.runtimes.openvino import device_capabilities
from tests.conftest import REPO

SMALL = {"input_size": "[128,128]", "fpn_channels": 32, "head_convs": 1, "backbone": "efficientnet_lite0"}
SHORT = {"max_steps": 3, "batch_size": 4, "workers": 0, "max_train_images": 0}
# teacher.checkpoint=null: the pipeline trains its tiny teacher instead of loading the shipped one
TINY = ["data.generator.size=tiny", "teacher.checkpoint=null", "quantize.calib_images=16", "export.warmup=1",
        "export.iters=5", "benchmark.warmup=1", "benchmark.iters=5",
        *(f"{role}.model.{k}={v}" for role in ("teacher", "student") for k, v in SMALL.items()),
        "teacher.model.head_channels=32", "student.model.head_channels=16",
        *(f"{role}.train.{k}={v}" for role in ("teacher", "student") for k, v in SHORT.items())]
# qat with 3 steps on the tiny model (its AP is ~0, so its gate is opened: tests/distill/test_qat.py tests the rest)
QAT = ["qat.train.max_steps=3", "qat.train.batch_size=4", "qat.train.workers=0", "qat.train.max_train_images=0",
       "qat.calib_images=16", "qat.max_map_drop=100"]
ALL = "stages=[data,teacher,student,distill,export,quantize,qat,engines,benchmark,report]"
NO_QAT = "stages=[data,teacher,student,distill,export,quantize,engines,benchmark,report]"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def pipeline(command, tiny_scenes, tmp_path, *args):
    cmd = [sys.executable, "-m", "pipeline", command, f"data.root={tiny_scenes}", f"runs_dir={tmp_path}", *TINY, *args]
    if command == "run":
        cmd[4:4] = ["--no-progress", "--quiet-config"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV)


def ran(stdout):
    return [line.split("]")[0][1:] for line in stdout.splitlines() if line.endswith("] start") or "] start (" in line]


@pytest.mark.slow
def test_tiny_pipeline_caches_reruns_what_changed_and_gates(tiny_scenes, tmp_path):
    first = pipeline("run", tiny_scenes, tmp_path, ALL, *QAT)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "default"
    stages = ["data", "teacher", "student", "distill", "export", "quantize", "qat", "engines", "benchmark", "report"]
    assert ran(first.stdout) == stages
    # export and quantize number their artifacts as they go
    for stage in ("export", "quantize"):
        steps = [line.split(")")[0].split("(")[1] for line in first.stdout.splitlines()
                 if line.startswith(f"[{stage}] (")]
        assert steps == [f"{k}/{len(steps)}" for k in range(1, len(steps) + 1)], steps
    assert "[export] (1/5) model.onnx: export and parity" in first.stdout  # the default exports the device form too
    for stage in stages:
        state = json.loads((run / stage / "stage.json").read_text())
        assert state["state"] == "done" and state["stage"] == stage and len(state["config_hash"]) == 16
    for stage in ("teacher", "student", "distill"):
        assert json.loads((run / stage / "metrics.json").read_text())["artifacts"]["pytorch"]["num_images"] == 24
        profile = json.loads((run / stage / "profile.json").read_text())
        assert profile["params"] > 1e5 and profile["gflops"] > 0 and profile["latency_ms"]["infer"]["p50"] > 0
    for name in ("export/model.onnx", "quantize/model.int8.onnx", "quantize/openvino/model_int8.xml",
                 "qat/model.qat.onnx", "qat/model_int8.xml", "qat/last.pt",
                 "benchmark/benchmark.json", "report/ap_vs_latency.png", "report/ap_by_stage.png",
                 "report/training_curves.png", "report.md", "report.html"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    quantize_json = json.loads((run / "quantize" / "metrics.json").read_text())
    bf16 = "openvino_bf16" not in quantize_json["skipped"]  # built where the CPU has bf16, else skipped, with why
    assert (bf16 == ("BF16" in device_capabilities(ov.Core(), "CPU"))
            or "cannot compile" in quantize_json["skipped"]["openvino_bf16"])
    assert list(rows) == ["teacher", "student", "distill", "onnxruntime_fp32", "onnxruntime_fp32_uint8",
                          "onnxruntime_fp32_nms", "onnxruntime_int8", "onnxruntime_int8_trt", "openvino_fp32",
                          *(["openvino_bf16"] if bf16 else []), "openvino_fp16", "openvino_int8", "openvino_int8_uint8",
                          "openvino_int8_nms", "openvino_int8_uint8_nms", "qat_onnxruntime", "qat_openvino"]
    # the benchmark timed every file export and quantize wrote, on the val images, each under its own name
    bench = json.loads((run / "benchmark" / "benchmark.json").read_text())
    names = [e["name"] for e in bench["results"]]
    assert len(names) == len(set(names)) and bench["settings"]["images"].endswith("instances_val.json")
    written = {p.resolve() for p in [*(run / "export").glob("*.onnx"), *(run / "quantize").glob("*.onnx"),
                                     *(run / "quantize" / "openvino").glob("*.xml")]}
    assert written <= {Path(e["artifact"]).resolve() for e in bench["results"]}
    assert {"export/onnxruntime_fp32_nms", "quantize/openvino_int8_uint8_nms", "qat/openvino_int8"} <= set(names)
    assert report["deployed"]["id"] in names and "open_detector" in (run / "report.md").read_text()
    check_tensorrt_qdq(run / "quantize" / "model.int8.trt.onnx")  # the file make export-trt PRECISION=int8 builds from
    check_tensorrt_qdq(run / "qat" / "model.qat.onnx")  # and, with engines.int8_source=qat, this one
    qat = json.loads((run / "qat" / "metrics.json").read_text())
    assert qat["steps"] == 3 and qat["method"] == "bckd" and rows["qat_openvino"]["previous"] == "onnxruntime_fp32"
    assert rows["qat_onnxruntime"]["AP"] == qat["artifacts"]["qat_onnxruntime"]["AP"]
    assert rows["onnxruntime_int8_trt"]["previous"] == "onnxruntime_fp32"
    for name in ("openvino_fp32", "openvino_fp16"):  # what ran is what the artifact says, on every CPU
        assert rows[name]["executed_precision"] == "fp32" and not rows[name]["precision_warning"]
    if bf16:
        assert (rows["openvino_bf16"]["executed_precision"] == "bf16"
                and rows["openvino_bf16"]["previous"] == "openvino_fp32")
        assert (quantize_json["artifacts"]["openvino_bf16"]["artifact"]
                == quantize_json["artifacts"]["openvino_fp32"]["artifact"])
    else:
        assert "Not built here: openvino_bf16" in (run / "report.md").read_text()
    quantized = quantize_json["artifacts"]
    for name, m in quantized.items():  # the report carries each stage's own figures
        assert rows[name]["AP"] == m["AP"] and rows[name]["size_mb"] == m["size_mb"]
    timed = {e["artifact"]: e for e in json.loads((run / "benchmark" / "benchmark.json").read_text())["results"]
             if not e["inference_precision"]}
    assert (rows["openvino_int8"]["latency_ms"]["p50"]
            == timed[quantized["openvino_int8"]["artifact"]]["latency_ms"]["infer"]["p50"])
    for row in report["rows"]:
        assert {"stage", "artifact", "runtime", "precision", "AP", "AP50", "AP75", "latency_ms", "e2e_latency_ms",
                "throughput_ips", "size_mb", "params", "gflops"} <= set(row)
        assert row["latency_ms"]["p99"] >= row["latency_ms"]["p50"] > 0 and row["params"] > 0
    assert rows["distill"]["previous"] == "student" and rows["openvino_int8"]["previous"] == "openvino_fp32"
    assert rows["openvino_int8"]["delta_AP_previous"] == rows["openvino_int8"]["AP"] - rows["openvino_fp32"]["AP"]
    assert report["versions"]["tensorrt"] and report["machine"]["cpu_threads"] > 0
    assert "TensorRT engines not built" in (run / "report.md").read_text()
    assert "data:image/png;base64," in (run / "report.html").read_text()

    again = pipeline("run", tiny_scenes, tmp_path, ALL, *QAT)  # nothing changed: every stage skipped
    assert again.returncode == 0 and ran(again.stdout) == [], again.stdout
    assert again.stdout.count("up to date") == len(stages)
    status = pipeline("status", tiny_scenes, tmp_path, ALL, *QAT)
    assert status.returncode == 0 and status.stdout.count(" done ") == len(stages), status.stdout

    # Files get the mode open() gives under the umask (atomic writes through mkstemp used to leave 0600)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("export/model.onnx", "report.html", "quantize/openvino/model_int8.xml", "distill/best.pt"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    # A copied run folder describes its own files: all done there, and a file deleted in the copy is missed
    # in the copy alone (stage.json names outputs relative to the run folder)
    shutil.copytree(run, tmp_path / "copy")
    copied = pipeline("status", tiny_scenes, tmp_path, ALL, *QAT, "run=copy")
    assert copied.stdout.count(" done ") == len(stages), copied.stdout
    (tmp_path / "copy" / "distill" / "best.pt").unlink()
    copied = dict(line.split(maxsplit=1) for line in pipeline("status", tiny_scenes, tmp_path, ALL, *QAT, "run=copy")
                  .stdout.splitlines()[1:])
    assert copied["distill"] == "stale    output changed or missing: distill/best.pt", copied
    status = pipeline("status", tiny_scenes, tmp_path, ALL, *QAT)
    assert status.stdout.count(" done ") == len(stages), status.stdout

    all_stages, stages = NO_QAT, [s for s in stages if s != "qat"]  # the rest leaves qat out (a tiny QAT costs 40 s)

    # quantize.artifacts: the rerun builds one INT8 IR, not six (the first run built and checked them all)
    changed = ["distill.cls_weight=2.0", "quantize.artifacts=[openvino_int8]"]
    status = pipeline("status", tiny_scenes, tmp_path, all_stages, *changed)
    states = dict(line.split()[:2] for line in status.stdout.splitlines()[1:])
    assert states == {**{s: "done" for s in stages[:3]}, **{s: "stale" for s in stages[3:]}}, status.stdout
    rerun = pipeline("run", tiny_scenes, tmp_path, all_stages, *changed)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert ran(rerun.stdout) == stages[3:], rerun.stdout
    kept = sorted((run / ".previous" / "distill").iterdir())  # one folder per generation set aside
    assert len(kept) == 1 and (kept[0] / "last.pt").is_file()  # the earlier student is kept, not resumed from

    gated = pipeline("run", tiny_scenes, tmp_path, all_stages, *changed, "distill.min_gain_over_baseline=100")
    assert gated.returncode == 3 and "stage distill" in gated.stderr and "min_gain_over_baseline" in gated.stderr
    assert ran(gated.stdout) == [] and "[export]" not in gated.stdout  # the gate alone changed: nothing retrained
    assert json.loads((run / "distill" / "stage.json").read_text())["state"] == "failed"
    assert (run / "distill" / "last.pt").is_file()  # artifacts left for inspection


@pytest.mark.slow
def test_sigterm_during_distillation_then_resume(tiny_scenes, tmp_path):
    longer = ["student.train.max_steps=24", "student.train.epochs=2", "student.train.save_every_steps=2",
              "stages=[data,teacher,distill,export]"]
    cmd = [sys.executable, "-m", "pipeline", "run", "--no-progress", "--quiet-config", f"data.root={tiny_scenes}",
           f"runs_dir={tmp_path}", *TINY, *longer]
    log = tmp_path / "first.log"
    checkpoint = tmp_path / "default" / "distill" / "last.pt"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
        deadline = time.time() + 300
        while not checkpoint.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 130, log.read_text()[-3000:]
    assert "[distill] done" not in log.read_text() and not (tmp_path / "default" / "export").exists()

    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[data] up to date" in second.stdout and "[teacher] up to date" in second.stdout
    resumed = [line for line in second.stdout.splitlines() if line.startswith("resumed from")]
    step = int(resumed[0].split(" at step ")[1].split()[0])
    assert 0 < step < 24, resumed
    assert "[distill] start (interrupted" in second.stdout
    records = [json.loads(line) for line in (checkpoint.parent / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 24  # none lost or logged twice
    assert (tmp_path / "default" / "export" / "model.onnx").is_file()
    assert json.loads((checkpoint.parent / "stage.json").read_text())["state"] == "done"
