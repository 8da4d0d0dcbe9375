"""YAML configs loaded into dataclasses, validated where they enter.

A section given as a path to another YAML file (`data: configs/datasets/coco.yaml`) is read in its
place. `key.sub=value` overrides apply after loading (values parsed as YAML: `3`, `true`, `[a, b]`,
`null`); an override whose value is a .yaml path replaces a whole section. An unknown key fails with
the file, the key, the closest valid key and the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from deploy.errors import InputError
from distill.data.fashion_scenes import FashionScenesConfig
from distill.models.config import ModelConfig
from distill.settings import DistillConfig, QatConfig, TrainConfig
from export.settings import ExportConfig, QuantizeConfig
from pipeline.stage_table import NAMES


class ConfigError(InputError):
    """A config file or override is invalid."""


@dataclass
class DataConfig:
    name: str = "fashion-scenes"
    root: str = "data/fashion-scenes"  # dataset root in COCO layout; the paths below are relative to it
    train_images: str = "train"
    val_images: str = "val"
    train_annotations: str = "annotations/instances_train.json"
    val_annotations: str = "annotations/instances_val.json"
    generator: FashionScenesConfig | None = None  # set: the data stage writes the dataset when missing
    check_images: bool = True  # open every image's header up front (missing, unreadable, wrong size)
    # Hold the last N training images (in the annotation file's order) out of every training stage: the
    # selection split, on which configurations are chosen so that val stays the test set (0: none).
    select_images: int = 0

    def split_paths(self, split: Literal["train", "val"]) -> tuple[Path, Path]:
        """(annotations json, image folder) of a split."""
        root = Path(self.root)
        if split == "train":
            return root / self.train_annotations, root / self.train_images
        return root / self.val_annotations, root / self.val_images


@dataclass
class RoleConfig:
    """A detector to train (teacher, or the student alone as a baseline)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # A trained checkpoint or weights file to use instead of training (null: train one). Its classes,
    # architecture (against `model`) and preprocessing are checked before anything uses it.
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None  # when set, the checkpoint's SHA-256 must equal it
    # The checkpoint's kind: edgekd (a trainer checkpoint or weights file) or mmdet (an mmdetection GFL
    # checkpoint, mapped onto `model`, e.g. configs/models/gfl_r101_mmdet.yaml). Teacher only.
    format: Literal["edgekd", "mmdet"] = "edgekd"
    # A torchvision COCO detector as the teacher: torchvision:retinanet_resnet50_fpn_v2,
    # torchvision:retinanet_resnet50_fpn or torchvision:fcos_resnet50_fpn; `checkpoint` then optionally
    # names its torchvision weights file (without one, torchvision downloads them). Teacher only.
    source: str | None = None


def external_teacher(t: RoleConfig) -> bool:
    """Whether the teacher comes from outside edgekd (an mmdetection checkpoint or a torchvision detector)."""
    return bool(t.source) or t.format != "edgekd"


def given_teacher(t: RoleConfig) -> bool:
    """Whether the teacher stage measures a teacher it is given (a file, mmdetection, torchvision) rather
    than training one."""
    return bool(t.checkpoint) or external_teacher(t)


@dataclass
class EnginesConfig:
    """TensorRT engines (built where TensorRT and a GPU are present; the stage records why not elsewhere)."""

    precisions: list[Literal["fp32", "fp16", "int8"]] = field(default_factory=lambda: ["fp16", "int8"])
    workspace_mb: int = 2048
    dla_core: int | None = None  # Jetson DLA core (GPU fallback on)
    efficient_nms: bool = False  # NMS in the engine (EfficientNMS_TRT, host NMS's settings)
    # The INT8 engine's source: ptq = quantize/model.int8.trt.onnx, qat = qat/model.qat.onnx (make qat)
    int8_source: Literal["ptq", "qat"] = "ptq"


@dataclass
class BenchmarkConfig:
    """Every artifact timed side by side in one process by deploy/benchmark.py (the report's latencies)."""

    warmup: int = 10
    iters: int = 100
    threads: int = 0  # 0 = each runtime's default
    evaluate: bool = False  # also its AP (each stage measured it already)
    # The letterbox's resize in end-to-end time: PIL (as training) or OpenCV (a device's faster path, the
    # same AP on the default data: docs/results.md)
    resize: Literal["pil", "opencv"] = "pil"


@dataclass
class ReportConfig:
    """The report names one deployed artifact: the fastest end to end whose AP passes the gates, or, with a
    budget, the most accurate one within it."""

    latency_budget_ms: float | None = None  # end-to-end p50 at batch 1 on this machine (null: the fastest)


STAGES = NAMES  # in order (pipeline/stage_table.py)
DEFAULT_STAGES = [s for s in STAGES if s != "student"]  # the student alone, the no-distillation baseline, is opt-in


@dataclass
class PipelineConfig:
    run: str = "default"  # the run's folder is <runs_dir>/<run>
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: RoleConfig = field(default_factory=RoleConfig)
    student: RoleConfig = field(default_factory=RoleConfig)  # its train section is also the distillation schedule
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    engines: EnginesConfig = field(default_factory=EnginesConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))  # which stages `run` runs by default

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run


# ---------------------------------------------------------------------------------------------------
# Generic dataclass <- dict with validation


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(cls: type, key: str, where: str, source: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    name = f"{where}.{key}" if where else key
    return ConfigError(f"{source}: unknown key '{name}'{hint}; valid keys: {', '.join(valid)}")


def _convert(tp: Any, value: Any, where: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, source)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping of {tp.__name__} keys, got {value!r}")
        return from_dict(tp, value, source, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{where}' must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{where}' must be a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)] if args else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{source}: '{where}' must be {tp.__name__}, got {value!r}")
    return value


def _field_default(cls: type, key: str) -> Any:
    """The default instance of a section field built by a factory of its own (qat.train's short
    schedule), else None: the section's class defaults apply."""
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    if f.default_factory is dataclasses.MISSING or isinstance(f.default_factory, type):
        return None
    return f.default_factory()


def from_dict(cls: type, data: dict, source: str, where: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from a dict, checking keys and types; errors name `source` and the key.
    Keys the dict leaves out keep `base`'s values, else the field's own default (so `qat.train.lr=...`
    changes one setting of qat's schedule rather than starting from TrainConfig's)."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(cls, key, where, source)
        name = f"{where}.{key}" if where else key
        inner = getattr(base, key) if base is not None else _field_default(cls, key)
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            kwargs[key] = from_dict(type(inner), value, source, name, inner)
        else:
            kwargs[key] = _convert(types_[key], value, name, source)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Files and overrides


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _section_type(cls: type, dotted: list[str], source: str) -> Any:
    """The declared type at a dotted key path (errors on unknown keys)."""
    tp: Any = cls
    for i, key in enumerate(dotted):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or [tp]
        tp = inner[0]
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{source}: '{'.'.join(dotted[:i])}' is a value, not a section")
        types_ = _field_types(tp)
        if key not in types_:
            raise _unknown_key(tp, key, ".".join(dotted[:i]), source)
        tp = types_[key]
    return tp


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or any(dataclasses.is_dataclass(a) for a in typing.get_args(tp))


def _resolve_includes(cls: type, data: dict, source: str) -> dict:
    """Replace `section: path.yaml` by that file's mapping, recursively."""
    types_ = _field_types(cls)
    out = dict(data)
    for key, value in data.items():
        tp = types_.get(key)
        if tp is None or not _is_section(tp):
            continue
        inner = tp if dataclasses.is_dataclass(tp) else next(a for a in typing.get_args(tp)
                                                             if dataclasses.is_dataclass(a))
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            value = _resolve_includes(inner, read_yaml(value), value)
            from_dict(inner, value, source=f"{data[key]}", where=key)  # errors name the included file
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _resolve_includes(inner, value, source)
    return out


def apply_override(cls: type, data: dict, override: str) -> None:
    """Apply one `key.sub=value` override to the raw config dict, in place."""
    source = f"override '{override}'"
    if "=" not in override:
        raise ConfigError(f"{source}: expected key.sub=value")
    key, _, text = override.partition("=")
    dotted = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    tp = _section_type(cls, dotted, source)
    if _is_section(tp) and isinstance(value, str) and value.endswith((".yaml", ".yml")):
        value = read_yaml(value)
    node = data
    for i, part in enumerate(dotted[:-1]):
        if not isinstance(node.get(part), dict):
            section = _section_type(cls, dotted[: i + 1], source)
            if type(None) in typing.get_args(section):  # an optional section left unset (data.generator: null)
                raise ConfigError(f"{source}: '{'.'.join(dotted[: i + 1])}' is not set in this config, so "
                                  f"'{key.strip()}' has nothing to change (a dataset of your own has no generator)")
            node[part] = {}
        node = node[part]
    node[dotted[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), cls: type = PipelineConfig) -> Any:
    """Read a YAML config (with included sections) and overrides into dataclass `cls`."""
    data = _resolve_includes(cls, read_yaml(path), str(path))
    # Validate the file alone first, so an error names the file rather than an override.
    from_dict(cls, data, str(path))
    for override in overrides:
        apply_override(cls, data, override)
        data = _resolve_includes(cls, data, f"override '{override}'")
    source = f"{path} (with overrides)" if overrides else str(path)
    config = from_dict(cls, data, source)
    if isinstance(config, PipelineConfig):
        check_ranges(config, source)
    return config


# (dotted key, lowest valid value, strictly above it): checked at load, before hours of work start.
RANGES = [(f"{role}.train.{key}", low, strict) for role in ("teacher", "student", "qat")
          for key, low, strict in (("batch_size", 1, False), ("epochs", 1, False), ("lr", 0.0, True),
                                   ("weight_decay", 0.0, False), ("warmup_steps", 0, False), ("max_steps", 0, False),
                                   ("max_train_images", 0, False), ("max_val_images", 0, False),
                                   ("grad_clip", 0.0, False), ("eval_every", 1, False), ("save_every_steps", 0, False),
                                   ("workers", 0, False))]
RANGES += [("report.latency_budget_ms", 0.0, True), ("data.select_images", 0, False),
           ("data.generator.long_tail_ratio", 1.0, False), ("distill.until_epoch", 0, False),
           ("quantize.calib_images", 8, False), ("quantize.max_map_drop", 0.0, False), ("export.iters", 1, False),
           ("qat.calib_images", 8, False), ("qat.max_map_drop", 0.0, False)]


def check_ranges(config: PipelineConfig, source: str) -> None:
    """Every numeric setting of RANGES within its range, and the run a folder name, else one ConfigError naming it."""
    if not config.run or config.run in (".", "..") or "/" in config.run or "\\" in config.run:
        raise ConfigError(f"{source}: 'run' must be a folder name inside "
                          f"runs_dir ({config.runs_dir}), got {config.run!r}")
    for dotted, low, strict in RANGES:
        value: Any = config
        for part in dotted.split("."):
            value = getattr(value, part) if value is not None else None
        if value is None:  # an optional setting left unset
            continue
        if value < low or (strict and value == low):
            bound = f"> {low}" if strict else f">= {low}"
            raise ConfigError(f"{source}: '{dotted}' must be {bound}, got {value!r}")


def to_yaml(config: Any) -> str:
    """A config as YAML, as printed at start and saved with the run."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
