"""The pipeline's stages, each declared once: its code, the config it reads, the files it consumes and
writes, its gate and its command. The runner (pipeline/run.py), the file names (pipeline/paths.py), the
gates' hash keys, the command line and `make help` all read this table, so a new stage is its module plus
one entry here (`make <stage>` runs any stage without a target of its own).

Standard library only, and no import of the project's other modules, so that `edgekd status`, `--help`
and `make help` (`python3 -m pipeline.stage_table`, before .venv exists) read it in milliseconds. Code
is named as "module:function" and imported when the stage runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import metrics_file

Config = Any  # pipeline.config.Config, not imported: the config reads this table's stage names

# Every stage that measures what it made writes it (pipeline/paths.py reads it); its layout is deploy/metrics_file.py's.
METRICS = metrics_file.NAME


@dataclass(frozen=True)
class Stage:
    name: str
    help: str  # one line: `make help`, `edgekd --help`
    run: str  # "module:function", called as function(cfg, out_dir, progress) -> its result (a dict)
    sections: tuple[str, ...]  # the config sections it reads (their hash decides whether it reruns)
    inputs: Callable[[Config], list[Path]]  # the files it consumes (their hash, likewise)
    upstream: tuple[str, ...] = ()  # the stages that make those files
    outputs: dict[str, str] = field(default_factory=dict)  # key -> file name in its folder (pipeline/paths.py)
    gate: str | None = None  # "module:function", called as function(cfg, stage) -> summary or None; raises GateError
    gate_keys: tuple[str, ...] = ()  # settings that only set the gate's limit: out of the config hash
    command: str | None = None  # `edgekd <command>` runs it alone: the run module's main(argv)
    extra_outputs: Callable[[Config], list[Path]] = lambda cfg: []  # files it writes outside its folder
    track_folder: bool = True  # its folder's files are outputs (not for data: training rewrites its stats.json)

    @property
    def module(self) -> str:
        return self.run.partition(":")[0]


def call(target: str, *args: Any) -> Any:
    """Call a "module:function" of the table, importing the module now (torch only loads for a stage that runs)."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(*args)


def output(cfg: Config, stage: str, key: str) -> Path:
    """The file a stage declares under `key`: <runs_dir>/<run>/<stage>/<name>."""
    return cfg.run_dir / stage / get(stage).outputs[key]


def role_checkpoint(cfg: Config, role: str) -> Path:
    """The teacher's or the student-alone's weights: the configured file, else what its stage trained."""
    return Path(getattr(cfg, role).checkpoint or output(cfg, role, "checkpoint"))


def export_source(cfg: Config) -> Path:
    """The checkpoint the export stage converts: export.checkpoint, else the distilled student."""
    return Path(cfg.export.checkpoint or output(cfg, "distill", "checkpoint"))


def engine_source(cfg: Config, precision: str) -> Path:
    """The ONNX an engine of this precision is built from (int8: the PTQ or the QAT Q/DQ file, engines.int8_source)."""
    if precision != "int8":
        return output(cfg, "export", "onnx")
    return output(cfg, "qat", "onnx") if cfg.engines.int8_source == "qat" else output(cfg, "quantize", "tensorrt_onnx")


def _annotations(cfg: Config) -> list[Path]:
    return [cfg.data.split_paths("train")[0], cfg.data.split_paths("val")[0]]


def _teacher_files(cfg: Config) -> list[Path]:
    """The teacher file distillation reads: none for a torchvision teacher without a weights file."""
    return [] if cfg.teacher.source and not cfg.teacher.checkpoint else [role_checkpoint(cfg, "teacher")]


def _benchmark_inputs(cfg: Config) -> list[Path]:
    """Every artifact the benchmark times: what the earlier stages wrote (pipeline/stages/benchmark.py knows)."""
    runnable, _ = call("pipeline.stages.benchmark:artifacts", cfg)
    return sorted({Path(call("deploy.benchmark:split_artifact", spec)[0]) for _, spec in runnable})


TRAINED = {"checkpoint": "last.pt", "metrics": METRICS, "profile": "profile.json"}

# In pipeline order. `student` (the student trained alone, the no-distillation baseline) is off by default.
STAGES: tuple[Stage, ...] = (
    Stage("data", "write the dataset the config names (fashion-scenes by default) and validate it",
          "pipeline.stages.data:run_stage", ("data",),
          lambda cfg: [] if cfg.data.generator else _annotations(cfg),
          outputs={"stats": "stats.json"}, extra_outputs=_annotations, track_folder=False),
    Stage("teacher", "the teacher: trained (make teacher: from scratch, whatever teacher.checkpoint says), or "
          "teacher.checkpoint / teacher.source measured", "pipeline.stages.train:run_teacher_stage", ("teacher",),
          lambda cfg: _annotations(cfg) + ([Path(cfg.teacher.checkpoint)] if cfg.teacher.checkpoint else []),
          ("data",), TRAINED, command="train"),
    Stage("student", "train the student alone (the no-distillation baseline)",
          "pipeline.stages.train:run_student_stage", ("student",), _annotations, ("data",), TRAINED, command="train"),
    Stage("distill", "distil the student from the teacher (make: TEACHER=path, METHOD=bckd|kd|kd_pos|ld|none)",
          "pipeline.stages.distill:run_stage", ("student", "distill"),
          lambda cfg: _annotations(cfg) + _teacher_files(cfg), ("data", "teacher"), TRAINED,
          gate="pipeline.gates:distill_gate", gate_keys=("min_gain_over_baseline",), command="distill"),
    Stage("export", "student checkpoint -> model.onnx, parity-gated, PyTorch and ONNX Runtime FP32 measured",
          "pipeline.stages.export:run_export", ("export",), lambda cfg: _annotations(cfg) + [export_source(cfg)],
          ("data", "distill"), {"onnx": "model.onnx", "onnx_nms": "model.nms.onnx", "metrics": METRICS},
          gate="pipeline.gates:export_gate", gate_keys=("score_atol", "box_atol"), command="export"),
    Stage("quantize", "ONNX Runtime INT8 (QDQ), OpenVINO FP32/FP16/INT8 (NNCF), each measured",
          "pipeline.stages.quantize:run_quantize", ("quantize", "export"),
          lambda cfg: _annotations(cfg) + [output(cfg, "export", "onnx")]
          + ([output(cfg, "export", "onnx_nms")] if cfg.export.nms == "graph" else []),
          ("data", "export"),
          {"onnxruntime_int8": "model.int8.onnx", "onnxruntime_int8_cpu": "model.int8.cpu.onnx",
           "tensorrt_onnx": "model.int8.trt.onnx", "openvino": "openvino", "metrics": METRICS},
          gate="pipeline.gates:int8_gate", command="quantize"),
    Stage("qat", "quantization-aware fine-tuning from the teacher -> model.qat.onnx (TensorRT's symmetric Q/DQ), "
          "model_int8.xml", "pipeline.stages.qat:run_qat", ("qat", "export"),
          lambda cfg: _annotations(cfg) + [export_source(cfg), output(cfg, "export", "metrics")] + _teacher_files(cfg),
          ("data", "teacher", "distill", "export"),
          {"onnx": "model.qat.onnx", "openvino": "model_int8.xml", "metrics": METRICS},
          gate="pipeline.gates:int8_gate", gate_keys=("max_map_drop",), command="qat"),
    Stage("engines", "TensorRT engines on a GPU box or Jetson (make export-trt PRECISION=fp32|fp16|int8)",
          "pipeline.stages.engines:run_engines", ("engines", "export"),
          lambda cfg: [output(cfg, "export", "onnx")]
          + ([engine_source(cfg, "int8")] if "int8" in cfg.engines.precisions else []),
          ("export", "quantize", "qat"), {"engines": "engines.json"}, command="engines"),
    Stage("benchmark", "deploy/benchmark.py over every artifact of the run this machine can run, on val images",
          "pipeline.stages.benchmark:run_benchmark", ("benchmark",), _benchmark_inputs,
          ("export", "quantize", "qat", "engines"), {"benchmark": "benchmark.json"}, command="benchmark"),
    Stage("report", "rewrite runs/<run>/report.{md,json,html} and its plots from the stages' files",
          "pipeline.stages.report:run_stage", ("report",),
          lambda cfg: [cfg.run_dir / s / "stage.json" for s in cfg.stages if s != "report"],
          ("data", "teacher", "student", "distill", "export", "quantize", "qat", "engines", "benchmark"),
          extra_outputs=lambda cfg: [cfg.run_dir / f"report.{ext}" for ext in ("md", "json", "html")]),
)
NAMES = tuple(s.name for s in STAGES)  # for the config's defaults; the runner reads STAGES itself


# Read STAGES at each call, so that the table is the one place a stage is added (a test adds one there)
def get(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


def gate_keys() -> dict[str, set[str]]:
    """Settings that only set a gate's limit, by config section (a stage's gate keys are of its own section)."""
    return {s.name: set(s.gate_keys) for s in STAGES if s.gate_keys}


def commands() -> dict[str, str]:
    """`edgekd <command>` -> the module whose main(argv) runs that stage alone."""
    return {s.command: s.module for s in STAGES if s.command}


def help_lines() -> str:
    return "\n".join(f"  make {s.name:<14} {s.help}" for s in STAGES)


if __name__ == "__main__":  # `make help`
    sys.stdout.write(help_lines() + "\n")
