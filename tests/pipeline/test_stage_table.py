"""The stage table drives the runner, the file names, the gates, the command line and `make help`: a stage
added there alone runs, is skipped when up to date, gates, and is listed."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.errors import GateError
from pipeline import paths, stage_table
from pipeline.config import PipelineConfig
from pipeline.run import pipeline_status, run_pipeline
from tests.conftest import REPO

CALLS: list[str] = []


def hello_stage(cfg: PipelineConfig, out: Path, progress: bool) -> dict:
    """The throwaway stage: writes its one declared output from its one declared input."""
    CALLS.append(cfg.run)
    words = (cfg.run_dir / "words.txt").read_text().split()
    (out / "greeting.json").write_text(json.dumps({"words": len(words)}))
    return {"words": len(words)}


def hello_gate(cfg: PipelineConfig, stage: str) -> str:
    words = json.loads(paths.stage_dir(cfg, stage).joinpath("greeting.json").read_text())["words"]
    if words > 3:
        raise GateError(f"stage {stage}: {words} words > 3")
    return f"{words} words <= 3"


HELLO = stage_table.Stage(
    "hello", "greet the run folder's words", f"{__name__}:hello_stage", ("report",),
    lambda cfg: [cfg.run_dir / "words.txt"], outputs={"greeting": "greeting.json"},
    gate=f"{__name__}:hello_gate", command="hello")


@pytest.fixture
def with_hello(monkeypatch):
    monkeypatch.setattr(stage_table, "STAGES", stage_table.STAGES + (HELLO,))
    CALLS.clear()


def test_a_stage_added_to_the_table_alone_runs_skips_gates_and_is_listed(with_hello, tmp_path, capsys):
    cfg = PipelineConfig(runs_dir=str(tmp_path), run="r", stages=["hello"])
    cfg.run_dir.mkdir()
    (cfg.run_dir / "words.txt").write_text("one two")
    assert pipeline_status(cfg)["hello"].state == "pending"

    run_pipeline(cfg)
    assert CALLS == ["r"]
    assert json.loads(stage_table.output(cfg, "hello", "greeting").read_text()) == {"words": 2}
    state = json.loads((cfg.run_dir / "hello" / "stage.json").read_text())
    assert state["state"] == "done" and state["gate"] == "2 words <= 3"
    assert list(state["outputs"]) == ["hello/greeting.json"]
    assert pipeline_status(cfg)["hello"].state == "done"

    run_pipeline(cfg)  # up to date: not run again
    assert CALLS == ["r"] and "[hello] up to date" in capsys.readouterr().out

    (cfg.run_dir / "words.txt").write_text("one two three four")  # its declared input changed: reruns, gate fails
    assert pipeline_status(cfg)["hello"].state == "stale"
    with pytest.raises(GateError, match="4 words > 3"):
        run_pipeline(cfg)
    assert CALLS == ["r", "r"]

    from pipeline.__main__ import all_commands
    assert all_commands()["hello"] == __name__
    assert "make hello" in stage_table.help_lines() and "greet the run folder's words" in stage_table.help_lines()


def test_unknown_stage_lists_the_tables_names(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.run import select_stages

    with pytest.raises(ConfigError, match="unknown stage 'helo'; valid stages: data, teacher, .*, report$"):
        select_stages(PipelineConfig(runs_dir=str(tmp_path)), ["helo"])


def test_every_declared_output_is_where_paths_says():
    cfg = PipelineConfig(runs_dir="/r", run="x")
    assert paths.onnx_model(cfg) == Path("/r/x/export/model.onnx")
    assert paths.metrics_file(cfg, "qat") == Path("/r/x/qat/metrics.json")
    assert paths.onnxruntime_int8(cfg, cpu=True) == Path("/r/x/quantize/model.int8.cpu.onnx")
    assert paths.engine_source(cfg, "int8") == Path("/r/x/quantize/model.int8.trt.onnx")
    assert paths.engine_source(dataclasses.replace(cfg, engines=dataclasses.replace(cfg.engines, int8_source="qat")),
                               "int8") == Path("/r/x/qat/model.qat.onnx")


def test_make_help_reads_the_table_without_the_venv():
    # the system interpreter, no .venv: `make help` works before `make setup`
    out = subprocess.run([sys.executable, "-S", "-m", "pipeline.stage_table"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert [line.split()[1] for line in out.splitlines()] == list(stage_table.names())
