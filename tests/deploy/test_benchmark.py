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
from distill.losses.detection import make_detection_loss
from distill.models.detector import build_detector
from distill.settings import TrainConfig
from distill.trainer import train
from export.openvino_int8 import openvino_ir
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
    train(model, make_detection_loss(SMALL), cfg, train_set, val, work / "train", (128, 128), {}, progress=False)
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


@pytest.mark.slow
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
    expected = export_metrics["artifacts"]["onnxruntime_fp32"]["AP"]
    assert expected > 0
    assert onnx_entry["AP"] == pytest.approx(expected, abs=1e-9)
    assert ov_entry["AP"] == pytest.approx(expected, abs=2e-3)  # OpenVINO differs from ORT by ~1e-6 in scores
    assert onnx_entry["AP50"] == pytest.approx(export_metrics["artifacts"]["onnxruntime_fp32"]["AP50"], abs=1e-9)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_batch_the_static_file_cannot_take_is_one_error(exported):
    proc = run_benchmark(exported[0], "--batch", "4", "--iters", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "fixed at 1" in proc.stderr


@pytest.mark.slow
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
    assert runnable == [("export/onnxruntime_fp32", str(onnx_path))]
    assert [Path(p).name for p, _ in skipped] == ["model_fp16.engine"] and "tensorrt is not installed" in skipped[0][1]
    # the Q/DQ files too
    for made in (run_dir / "quantize" / "model.int8.trt.onnx", run_dir / "qat" / "model.qat.onnx"):
        made.parent.mkdir(exist_ok=True)
        shutil.copy(onnx_path, made)
    assert [(n, Path(p).name) for n, p in artifacts(cfg)[0]] == [
        ("export/onnxruntime_fp32", "model.onnx"), ("quantize/model.int8.trt.onnx", "model.int8.trt.onnx"),
        ("qat/model.qat.onnx", "model.qat.onnx")]  # in no metrics.json: named by their file


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
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                         [1, channels_in, 32, 32])],
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


@pytest.mark.slow
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


def detector_onnx(path, classes=3, size=32, seed=0):
    """A detector as small as the export contract allows: 'images' [1, 3, size, size] -> 'boxes' [1, A, 4]
    and 'scores' [1, A, classes] (sigmoid), one strided convolution, no torch. Some scores pass 0.05."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    anchors = (size // 8) ** 2
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(0, 0.05, (4 + classes, 3, 8, 8)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 4 + classes, anchors], np.int64), "shape")
    split = numpy_helper.from_array(np.array([4, classes], np.int64), "split")
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], strides=[8, 8]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Split", ["t", "split"], ["raw", "logits"], axis=2),
             helper.make_node("Relu", ["raw"], ["boxes"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"])]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    graph = helper.make_graph(nodes, "g", [image],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, anchors, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, anchors, classes])],
                              [weight, shape, split])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def small_dataset(root, classes=3, count=3, width=40, height=30):
    """A COCO dataset of `count` grey JPEGs (40x30: not the model's 32x32, so the letterbox has work to do)."""
    from tests.conftest import write_coco

    images = [{"id": k + 1, "file_name": f"{k}.jpg", "width": width, "height": height} for k in range(count)]
    annotations = [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0}
                   for k in range(count)]
    return write_coco(root, images, annotations, [{"id": c + 1, "name": f"c{c}"} for c in range(classes)])


def bench(argv, capsys):
    """deploy/benchmark.py's main in this process: (exit code, stdout, stderr lines)."""
    from deploy.benchmark import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


QUICK = ["--warmup", "0", "--iters", "2"]


def test_latency_only_times_the_dataset_images_and_skips_ap(tmp_path, capsys, monkeypatch):
    """Before: no --latency-only; --data always evaluated AP on all of val."""
    import deploy.benchmark as bm
    import deploy.measure

    model, data = detector_onnx(tmp_path / "m.onnx"), small_dataset(tmp_path / "d", count=10)
    timed = []
    measure = bm.measure_artifact
    monkeypatch.setattr(bm, "measure_artifact", lambda *a, **k: timed.append(a[5]) or measure(*a, **k))
    monkeypatch.setattr(deploy.measure, "predict", lambda *a, **k: pytest.fail("AP evaluated under --latency-only"))
    code, out, err = bench([model, "--data", data, "--latency-only", *QUICK, "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert "AP" not in result["results"][0] and result["settings"]["images"] == str(data)
    assert result["settings"]["evaluate_ap"] is False
    assert [image.shape for image in timed[0]] == [(30, 40, 3)] * 8  # the dataset's first 8, not a canvas
    assert "synthetic" not in out


def test_without_data_the_table_and_json_say_the_image_was_synthetic(tmp_path, capsys):
    model = detector_onnx(tmp_path / "m.onnx")
    code, out, err = bench([model, *QUICK, "--json", tmp_path / "b.json", "--markdown", tmp_path / "b.md"], capsys)
    assert code == 0, err
    assert "synthetic grey image" in out and "pre, post and e2e mean nothing" in out
    assert "synthetic grey image" in (tmp_path / "b.md").read_text()
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["images"] == "synthetic"


def test_names_label_every_row_thread_setting_and_round(tmp_path, capsys):
    """Before: no --names; the table showed the file name (two stages' model.onnx read alike) and the rounds
    summary grouped by file, so one file timed under two names merged into one row."""
    from deploy.benchmark import artifact_names

    model, out_json = detector_onnx(tmp_path / "m.onnx"), tmp_path / "b.json"
    code, out, err = bench([model, model, "--names", "export/fp32, qat/int8", "--threads", "1,2", "--rounds", "2",
                            *QUICK, "--json", out_json], capsys)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert [(e["name"], e["threads"], e["round"]) for e in result["results"][:4]] == [
        ("export/fp32", 1, 0), ("export/fp32", 2, 0), ("qat/int8", 1, 0), ("qat/int8", 2, 0)]
    assert [(r["name"], r["threads"], r["rounds"]) for r in result["summary"]] == [
        ("export/fp32", 1, 2), ("export/fp32", 2, 2), ("qat/int8", 1, 2), ("qat/int8", 2, 2)]
    assert "| export/fp32 | onnxruntime |" in out and "| qat/int8 | onnxruntime |" in out
    other = tmp_path / "qat" / "m.onnx"
    other.parent.mkdir()
    shutil.copy(model, other)
    code, out, err = bench([model, model, other, *QUICK, "--json", out_json], capsys)  # default: the file name...
    assert code == 0 and [e["name"] for e in json.loads(out_json.read_text())["results"]] == [
        str(model), f"{model}#2", str(other)]  # ... unless two files share it
    assert artifact_names(None, ["a/m.onnx", "a/model_fp32.xml@bf16"]) == ["m.onnx", "model_fp32.xml@bf16"]
    assert artifact_names(None, ["a/m.onnx", "a/m.onnx"]) == ["m.onnx", "m.onnx#2"]


@pytest.mark.parametrize("names, message", [
    ("a", "--names a: 1 names for 2 artifacts; give one per ARTIFACT, in order"),
    ("a,b,c", "--names a,b,c: 3 names for 2 artifacts"),
    ("a,a", "--names a,a: 'a' names two artifacts; every name must differ"),
    ("a,", "--names a,: an empty name"),
])
def test_names_that_do_not_match_the_artifacts_are_one_line(tmp_path, capsys, names, message):
    model = detector_onnx(tmp_path / "m.onnx")
    code, _, err = bench([model, model, "--names", names, *QUICK], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), err


def summary_entry(name, infer_p50, e2e_p50, threads=1):
    return {"name": name, "artifact": f"/x/{name}.onnx", "threads": threads, "precision": "fp32",
            "latency_ms": {"infer": {"p50": infer_p50}, "end_to_end": {"p50": e2e_p50}}}


def test_rounds_summary_reports_the_true_median_with_min_and_max():
    """Before: sorted(...)[len // 2], so two rounds of 1.9 and 2.5 printed 'median 2.50'."""
    from deploy.benchmark import rounds_summary

    entries = [summary_entry("a", 1.9, 3.0), summary_entry("a", 2.5, 4.0)]
    entries += [summary_entry("b", v, 10 * v) for v in (4.0, 1.0, 3.0, 2.0)]
    text, rows = rounds_summary(entries)
    a, b = rows
    assert (a["infer_p50_median"], a["infer_p50_min"], a["infer_p50_max"]) == (pytest.approx(2.2), 1.9, 2.5)
    assert (a["e2e_p50_median"], a["e2e_p50_min"], a["e2e_p50_max"]) == (3.5, 3.0, 4.0)
    assert (b["rounds"], b["infer_p50_median"], b["infer_p50_min"], b["infer_p50_max"]) == (4, 2.5, 1.0, 4.0)
    assert (b["e2e_p50_median"], b["e2e_p50_min"], b["e2e_p50_max"]) == (25.0, 10.0, 40.0)
    assert b["speedup_vs_first"] == pytest.approx(2.2 / 2.5)
    assert "| a | fp32 | None | 1 | - | 2.20 | 1.90 | 2.50 | 1.90 / 2.50 | 3.50 | 3.00 | 4.00 | 1.00x |" in text
    assert ("| b | fp32 | None | 1 | - | 2.50 | 1.00 | 4.00 | 4.00 / 1.00 / 3.00 / 2.00 | 25.00 | 10.00 | 40.00 "
            "| 0.88x |") in text


@pytest.mark.parametrize("option, message", [
    (["--iters", "0"], "--iters 0: must be at least 1"),  # before: a ValueError traceback from time_calls
    (["--warmup", "-1"], "--warmup -1: must be at least 0"),  # before: no warm-up, silently
    (["--rounds", "0"], "--rounds 0: must be at least 1"),
    (["--batch", "0"], "--batch 0: must be at least 1"),
])
def test_counts_the_timing_cannot_use_are_one_line(tmp_path, capsys, option, message):
    code, _, err = bench([detector_onnx(tmp_path / "m.onnx"), *option], capsys)
    assert code == 2 and err == [f"error: {message}"]


def test_a_directory_given_as_the_artifact_is_one_line_saying_what_it_holds(tmp_path, capsys):
    """Before: "cannot tell the runtime from the suffix '' ...; pass --backend", then with it "artifact not found"."""
    folder = tmp_path / "export"
    folder.mkdir()
    detector_onnx(folder / "model.onnx")
    (folder / "notes.txt").write_text("")
    for extra in ([], ["--backend", "onnxruntime"]):
        code, _, err = bench([folder, *extra, *QUICK], capsys)
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: {folder}: is a directory; give the model file: .onnx, .xml, .engine, .plan")
        assert err[0].endswith("(it holds model.onnx)")


def test_a_dataset_with_other_classes_than_the_model_is_one_line(tmp_path, capsys):
    """Before: AP mapped the model's class k to a category that is not k (or an IndexError past the last)."""
    model, data = detector_onnx(tmp_path / "m.onnx", classes=3), small_dataset(tmp_path / "d", classes=2)
    code, _, err = bench([model, "--data", data, *QUICK], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"error: {data}: 2 categories, but {model} scores 3 classes: AP needs the dataset the model was "
                      "trained on (--latency-only times on any images)")
    code, _, err = bench([model, "--data", data, "--latency-only", *QUICK], capsys)  # timing needs no classes
    assert code == 0, err


@pytest.mark.parametrize("which, latency_only", [(1, True), (9, False)])
def test_an_image_that_does_not_decode_is_one_line_naming_it(tmp_path, capsys, which, latency_only):
    """A cut JPEG passes load_coco's header check. Image 1 is among the 8 latency is timed on; image 9 only
    AP decodes. Before: OSError 'image file is truncated' with a traceback."""
    model, data = detector_onnx(tmp_path / "m.onnx"), small_dataset(tmp_path / "d", count=10)
    bad = tmp_path / "d" / "val" / f"{which}.jpg"
    bad.write_bytes(bad.read_bytes()[:-10])  # the header whole, the scan cut
    code, _, err = bench([model, "--data", data, *(["--latency-only"] if latency_only else []), *QUICK], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {bad}: cannot be decoded as an image (")
