"""stage.json bookkeeping: hashes, the done / stale / pending / failed decision, setting a stale stage aside."""

import hashlib
import json
from pathlib import Path

from distill.settings import DistillConfig
from pipeline.stage_state import (
    config_hash,
    inputs_hash,
    output_files,
    remove_temporaries,
    set_aside,
    stage_status,
    write_state,
)
from pipeline.stage_table import gate_keys


def test_config_hash_follows_settings_but_not_gate_limits():
    base = config_hash({"distill": DistillConfig()}, gate_keys())
    assert base == config_hash({"distill": DistillConfig()}, gate_keys())
    assert base != config_hash({"distill": DistillConfig(cls_weight=2.0)}, gate_keys())
    assert base == config_hash({"distill": DistillConfig(min_gain_over_baseline=5.0)}, gate_keys())


def test_settings_added_later_leave_the_hash_of_older_runs_alone():
    """A run made before distill.until_epoch and model.point_offset existed hashed the sections without
    them; at their defaults they still hash the same, so upgrading redoes no stage; set, they count."""
    from dataclasses import asdict

    from distill.models.config import ModelConfig

    older = {k: v for k, v in asdict(DistillConfig()).items() if k not in ("until_epoch", "loc_detached_features")}
    older_model = {k: v for k, v in asdict(ModelConfig()).items() if k not in ("point_offset", "relu_before_p7")}
    assert config_hash({"distill": DistillConfig()}) == config_hash({"distill": older})
    assert (config_hash({"student": {"model": older_model}})
            != config_hash({"student": {"model": asdict(ModelConfig(point_offset=0.0))}}))
    assert (config_hash({"student": {"model": asdict(ModelConfig())}})
            == config_hash({"student": {"model": older_model}}))
    assert config_hash({"distill": DistillConfig(until_epoch=2)}) != config_hash({"distill": older})


def test_inputs_hash_follows_file_contents(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"one")
    first, missing, _ = inputs_hash([a])
    assert missing == [] and inputs_hash([a])[0] == first
    a.write_bytes(b"two")
    assert inputs_hash([a])[0] != first
    assert inputs_hash([a, tmp_path / "gone"])[1] == [str(tmp_path / "gone")]


def test_status_of_a_stage_through_its_life(tmp_path):
    stage = tmp_path / "export"
    assert stage_status(stage, "c", "i", [], []).state == "pending"
    stage.mkdir()
    (stage / "model.onnx").write_bytes(b"x" * 10)
    write_state(stage, state="running", config_hash="c", inputs_hash="i")
    assert stage_status(stage, "c", "i", [], []).reason.startswith("interrupted")
    write_state(stage, state="done", config_hash="c", inputs_hash="i", outputs=output_files(stage))
    assert json.loads((stage / "stage.json").read_text())["outputs"] == {
        str(stage / "model.onnx"): {"size": 10, "sha256": hashlib.sha256(b"x" * 10).hexdigest()}}
    assert stage_status(stage, "c", "i", [], []).state == "done"
    assert stage_status(stage, "c2", "i", [], []).state == "stale"
    assert stage_status(stage, "c", "i2", [], []).state == "stale"
    assert stage_status(stage, "c", "i", [], ["distill"]).reason == "upstream distill will rerun"
    (stage / "model.onnx").write_bytes(b"y" * 10)  # changed behind the pipeline's back, same size
    status = stage_status(stage, "c", "i", [], [])
    assert status.state == "stale" and status.reason == f"output changed or missing: {stage / 'model.onnx'}"
    (stage / "model.onnx").write_bytes(b"x" * 10)
    assert stage_status(stage, "c", "i", [], []).state == "done"
    (stage / "model.onnx").write_bytes(b"y" * 3)
    assert stage_status(stage, "c", "i", [], []).state == "stale"
    write_state(stage, state="failed", config_hash="c", inputs_hash="i", error="gate")
    assert stage_status(stage, "c", "i", [], []).state == "failed"


def test_set_aside_keeps_the_earlier_outputs(tmp_path):
    stage = tmp_path / "distill"
    stage.mkdir()
    (stage / "last.pt").write_bytes(b"old")
    moved = set_aside(stage, tmp_path)
    assert not stage.exists() and (moved / "last.pt").read_bytes() == b"old"
    stage.mkdir()
    (stage / "last.pt").write_bytes(b"newer")
    again = set_aside(stage, tmp_path)
    assert (again / "last.pt").read_bytes() == b"newer"
    # two changes of settings: both earlier generations are kept, oldest first by name
    kept = sorted((tmp_path / ".previous" / "distill").iterdir())
    assert kept == [moved, again] and (moved / "last.pt").read_bytes() == b"old"


def test_what_a_killed_write_left_is_never_an_output_and_is_removed_on_resume(tmp_path):
    """A SIGKILL while OpenVINO saved the FP32 IR left .model_fp32.<x>.tmp/ (a partial model.bin, an empty
    model.xml), and one during ONNX Runtime's quantization .model.int8.onnx.<x>.tmp; both were recorded."""
    stage = tmp_path / "quantize"
    ir_tmp = stage / "openvino" / ".model_fp32.k3j2.tmp"
    ir_tmp.mkdir(parents=True)
    (ir_tmp / "model.bin").write_bytes(b"\0" * 100)
    (ir_tmp / "model.xml").write_text("")
    (stage / ".model.int8.onnx.x8a1.tmp").write_bytes(b"partial")
    (stage / "model.int8.onnx").write_bytes(b"done")
    (stage / "openvino" / "model_fp32.xml").write_text("<net/>")
    assert sorted(Path(p).name for p in output_files(stage)) == ["model.int8.onnx", "model_fp32.xml"]
    removed = remove_temporaries(stage)
    assert sorted(p.name for p in removed) == [".model.int8.onnx.x8a1.tmp", ".model_fp32.k3j2.tmp"]
    assert sorted(p.name for p in stage.rglob("*")) == ["model.int8.onnx", "model_fp32.xml", "openvino"]


def test_an_unreadable_stage_json_is_named_not_adopted(tmp_path):
    """An empty, cut or non-JSON stage.json used to read as files from outside the pipeline, 'adopted'."""
    stage = tmp_path / "distill"
    stage.mkdir()
    (stage / "last.pt").write_bytes(b"x")
    for text in ("", '{"state": "do', "[1, 2]"):
        (stage / "stage.json").write_text(text)
        status = stage_status(stage, "c", "i", [], [])
        assert (status.state, status.reason) == (
            "stale", f"{stage / 'stage.json'} is unreadable (empty, cut or not JSON): reruns")
    (stage / "stage.json").unlink()
    assert stage_status(stage, "c", "i", [], []).reason == "has files from a run outside the pipeline: adopts them"


def test_outputs_are_named_relative_to_the_run_folder(tmp_path):
    run = tmp_path / "runs" / "default"
    (run / "export").mkdir(parents=True)
    (run / "export" / "model.onnx").write_bytes(b"onnx")
    outside = tmp_path / "weights.pt"
    outside.write_bytes(b"w")
    files = output_files(run / "export", [outside], run)
    assert set(files) == {"export/model.onnx", str(outside)}
    assert inputs_hash([run / "export" / "model.onnx"], run)[0] != inputs_hash([run / "export" / "model.onnx"])[0]
    # the hash older stage.json files hold (names as given) comes from the same pass
    assert inputs_hash([run / "export" / "model.onnx"], run)[2] == inputs_hash([run / "export" / "model.onnx"])[0]
    copy = tmp_path / "copy"
    (copy / "export").mkdir(parents=True)
    (copy / "export" / "model.onnx").write_bytes(b"onnx")
    assert (inputs_hash([copy / "export" / "model.onnx"], copy)[0]
            == inputs_hash([run / "export" / "model.onnx"], run)[0])
    write_state(copy / "export", state="done", config_hash="c", inputs_hash="i", names="run-relative", outputs=files)
    assert stage_status(copy / "export", "c", ("i",), [], []).state == "done"
    (copy / "export" / "model.onnx").unlink()  # the copy's own file, not the original's
    assert stage_status(copy / "export", "c", "i", [], []).reason == "output changed or missing: export/model.onnx"
