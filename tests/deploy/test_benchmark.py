"""deploy/benchmark.py as a device runs it: a script, torch unimportable, on ONNX Runtime and OpenVINO
artifacts of a (briefly) trained detector, its mAP checked against the export stage's."""

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from distill.checkpoint import save_checkpoint
from distill.losses.gfl import make_gfl_loss
from distill.models.detector import build_detector
from distill.trainer import TrainConfig, train
from export.quantize import openvino_ir
from pipeline.config import PipelineConfig
from pipeline.stages.export import run_export
from tests.conftest import REPO, SMALL

LATENCY_KEYS = {"mean", "std", "min", "p50", "p90", "p99"}


@pytest.fixture(scope="module")
def exported(tiny_scenes, tiny_splits, tmp_path_factory):
    """The export stage run on a detector trained for 48 steps (AP above 0, so equality means something)."""
    work = tmp_path_factory.mktemp("bench")
    train_set, val = tiny_splits
    model = build_detector(SMALL, len(train_set.class_names), seed=0)
    cfg = TrainConfig(epochs=8, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=0.0, warmup_steps=0,
                      schedule="cosine", augment=[], workers=0,
                      eval_every=100)
    train(model, make_gfl_loss(), cfg, train_set, val, work / "train", (128, 128), {}, progress=False)
    save_checkpoint(work / "model.pt", {"model": model.state_dict(), "config": asdict(SMALL),
                                        "classes": train_set.class_names})
    pcfg = PipelineConfig(run="r", runs_dir=str(work))
    pcfg.data.root, pcfg.data.generator = str(tiny_scenes), None
    pcfg.export.checkpoint, pcfg.export.iters, pcfg.export.warmup = str(work / "model.pt"), 3, 1
    metrics = run_export(pcfg, work / "r" / "export", progress=False)
    onnx_path = work / "r" / "export" / "model.onnx"
    return onnx_path, openvino_ir(onnx_path, work / "model_fp32.xml"), metrics


def run_benchmark(*args):
    # torch made unimportable: the device has none
    code = ("import runpy, sys\nsys.modules['torch'] = None\n"
            f"sys.argv = ['deploy/benchmark.py', *{list(map(str, args))!r}]\n"
            "runpy.run_path('deploy/benchmark.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)


def test_benchmark_reports_every_field_and_the_export_stage_map(exported, tiny_scenes, tmp_path):
    onnx_path, xml, export_metrics = exported
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    proc = run_benchmark(onnx_path, xml, "--data", tiny_scenes / "annotations" / "instances_val.json",
                         "--warmup", "1", "--iters", "5", "--json", out_json, "--markdown", out_md)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out_json.read_text())
    onnx_entry, ov_entry = result["results"]
    assert (onnx_entry["backend"], ov_entry["backend"]) == ("onnxruntime", "openvino")
    for entry in (onnx_entry, ov_entry):
        assert entry["precision"] == "fp32" and entry["batch"] == 1 and entry["throughput_ips"] > 0
        for kind in ("infer", "end_to_end", "preprocess", "postprocess"):
            assert set(entry["latency_ms"][kind]) >= LATENCY_KEYS
        lat = entry["latency_ms"]
        assert entry["e2e_over_infer"] == pytest.approx(lat["end_to_end"]["p50"] / lat["infer"]["p50"], abs=1e-3)
        # Each part is timed on its own, so no order between them holds on a loaded machine; each set of
        # statistics is consistent in itself.
        for kind in ("infer", "end_to_end", "preprocess", "postprocess"):
            assert 0 < lat[kind]["min"] <= lat[kind]["p50"] <= lat[kind]["p90"] <= lat[kind]["p99"], kind
    expected = export_metrics["onnxruntime_fp32"]["AP"]
    assert expected > 0
    assert onnx_entry["AP"] == pytest.approx(expected, abs=1e-9)
    assert ov_entry["AP"] == pytest.approx(expected, abs=2e-3)  # OpenVINO differs from ORT by ~1e-6 in scores
    assert onnx_entry["AP50"] == pytest.approx(export_metrics["onnxruntime_fp32"]["AP50"], abs=1e-9)
    machine = result["machine"]
    assert machine["cpu_threads"] >= 1 and "onnxruntime" in machine["runtimes"] and "openvino" in machine["runtimes"]
    assert machine["cpu"] and isinstance(machine["isa"], list)
    assert machine["openvino_cpu"]["optimization_capabilities"]  # the plugin's own view, beside /proc/cpuinfo's
    for entry in (onnx_entry, ov_entry):  # what ran, read back from each runtime, at which thread count
        assert entry["executed_precision"] == "fp32" and entry["threads"] >= 1 and entry["threads_setting"] == "default"
    assert ov_entry["execution"]["inference_precision_hint"] == "f32"
    text = out_md.read_text()
    assert f"| model.onnx | onnxruntime | fp32 | fp32 | {onnx_entry['threads']} | 1 |" in text
    assert f"({', '.join(machine['isa']) or 'no AVX2'}; {machine['cpu_threads']} threads)" in text


def test_threads_and_inference_precision_are_per_entry(exported, tmp_path):
    import openvino as ov

    onnx_path, xml, _ = exported
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    specs = [onnx_path, xml] + ([f"{xml}@bf16"] if bf16 else [])
    out_json = tmp_path / "t.json"
    proc = run_benchmark(*specs, "--threads", "1,2", "--warmup", "1", "--iters", "3", "--json", out_json)
    if proc.returncode == 2 and "cannot compile it for CPU with bf16" in proc.stderr:
        pytest.skip("bf16 reported but capped away (ONEDNN_MAX_CPU_ISA)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = json.loads(out_json.read_text())["results"]
    assert [(e["backend"], e["threads"]) for e in entries][:4] == [("onnxruntime", 1), ("onnxruntime", 2),
                                                                   ("openvino", 1), ("openvino", 2)]
    if bf16:
        assert [(e["inference_precision"], e["precision"], e["executed_precision"]) for e in entries[4:]] == \
            [("bf16", "bf16", "bf16")] * 2
    assert run_benchmark(onnx_path, "--threads", "0").stderr.strip().endswith("thread counts must be at least 1")
    proc = run_benchmark(f"{onnx_path}@bf16", "--iters", "1")
    assert proc.returncode == 2 and "applies to OpenVINO IRs only" in proc.stderr


def test_a_batch_the_static_file_cannot_take_is_one_error(exported):
    proc = run_benchmark(exported[0], "--batch", "4", "--iters", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "fixed at 1" in proc.stderr


def test_make_benchmark_runs_what_it_can_and_lists_engines_it_cannot(exported, tiny_scenes):
    from deploy.runtimes.tensorrt import available
    from pipeline.stages.benchmark import artifacts

    if available() is None:
        pytest.skip("TensorRT is available here: engines would run")
    onnx_path = exported[0]
    run_dir = onnx_path.parents[1]
    (run_dir / "engines").mkdir(exist_ok=True)
    (run_dir / "engines" / "model_fp16.engine").write_bytes(b"")
    cfg = PipelineConfig(run=run_dir.name, runs_dir=str(run_dir.parent))
    runnable, skipped = artifacts(cfg)
    assert runnable == [str(onnx_path)]
    assert [Path(p).name for p, _ in skipped] == ["model_fp16.engine"] and "tensorrt is not installed" in skipped[0][1]
    for made in (run_dir / "quantize" / "model.int8.trt.onnx", run_dir / "qat" / "model.qat.onnx"):  # the Q/DQ files too
        made.parent.mkdir(exist_ok=True)
        shutil.copy(onnx_path, made)
    assert [Path(p).name for p in artifacts(cfg)[0]] == ["model.onnx", "model.int8.trt.onnx", "model.qat.onnx"]


def one_conv_onnx(path, channels_in, outputs=("boxes", "scores")):
    """A one-convolution ONNX model: input 'images' [1, channels_in, 32, 32], its outputs named `outputs`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, channels_in, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["images", "w"], [outputs[0]])]
    outs = [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, [1, 4, 32, 32])]
    if len(outputs) > 1:
        nodes.append(helper.make_node("Sigmoid", [outputs[0]], [outputs[1]]))
        outs.append(helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, [1, 4, 32, 32]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, channels_in, 32, 32])],
                              outs, [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("channels, outputs, fragments", [
    (1, ("boxes", "scores"), ["input 'images' [1, 1, 32, 32]", "one image input [N, 3, H, W]"]),
    (3, ("y",), ["no 'boxes' output (it has y)", "outputs 'boxes' [N, A, 4] and 'scores'"]),
])
def test_a_model_outside_the_export_contract_is_one_error(tmp_path, channels, outputs, fragments):
    """Before: INVALID_ARGUMENT from ONNX Runtime (another input shape) or KeyError: 'scores'."""
    path = one_conv_onnx(tmp_path / "m.onnx", channels, outputs)
    proc = run_benchmark(path, "--warmup", "1", "--iters", "2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0]


def test_the_benchmark_stage_passes_its_resize_to_the_device_script(exported, monkeypatch):
    from deploy.errors import InputError
    from pipeline.stages import benchmark as stage

    commands = []
    monkeypatch.setattr(stage.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or
                        subprocess.CompletedProcess(cmd, 1, stdout=""))
    run_dir = exported[0].parents[1]
    cfg = PipelineConfig(run=run_dir.name, runs_dir=str(run_dir.parent))
    for resize in ("pil", "opencv"):
        cfg.benchmark.resize = resize
        with pytest.raises(InputError, match="exit code 1"):
            stage.run_benchmark(cfg, run_dir / "benchmark", progress=False)
    assert "--resize" not in commands[0] and commands[1][-2:] == ["--resize", "opencv"]
