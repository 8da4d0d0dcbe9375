"""What the pipeline knows about a stage between runs: <run>/<stage>/stage.json.

A stage is written `running` with the hash of its config sections and of its input files before its
work starts, and `done` (or `failed`, for a gate) with the files it left when it ends. Comparing
those hashes with the current ones says whether the stage can be skipped, resumes (interrupted with
the same hashes) or reruns from scratch (its settings or inputs changed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.files import sha256_file, write_json
from deploy.machine import package_version

STATE_FILE = "stage.json"


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that change results (recorded with every stage), read from
    the installed packages' metadata: nothing is imported."""
    out = {"python": platform.python_version()}
    for module in ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "pycocotools",
                   "tensorrt"):
        out[module] = package_version(module) or "not installed"
    return out


# Settings added after runs existed, with the default that reproduces what those runs did: left out of
# the hash while at that default, so that upgrading edgekd does not redo finished stages.
ADDED_AT_DEFAULT = {"point_offset": 0.5, "relu_before_p7": True, "format": "edgekd", "source": None,
                    "until_epoch": None, "loc_detached_features": False, "uint8_input": False, "nms": "host",
                    "efficient_nms": False, "int8_source": "ptq", "resize": "pil", "select_images": 0,
                    "long_tail_ratio": 1.0, "cls_region": "all", "kd_pos_weight": 10.0, "kd_pos_temperature": 2.0,
                    "monitor": "val"}


def _without_added_defaults(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _without_added_defaults(v) for k, v in values.items()
                if not (k in ADDED_AT_DEFAULT and v == ADDED_AT_DEFAULT[k])}
    return values


def config_hash(sections: dict[str, Any], exclude: dict[str, set[str]] | None = None) -> str:
    """Hash of named config sections (dataclasses), leaving out `exclude[section]` keys (gate limits:
    tightening a gate must not retrain anything) and later-added settings at their defaults."""
    exclude = exclude or {}
    data = {}
    for name, section in sections.items():
        values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
        data[name] = _without_added_defaults({k: v for k, v in values.items() if k not in exclude.get(name, set())})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _name(path: Path, run_dir: Path | None) -> str:
    """A file's name in stage.json: relative to the run folder when inside it, so that a copied or moved run
    folder describes its own files; as given otherwise (a dataset, a shipped teacher)."""
    if run_dir is not None:
        with contextlib.suppress(ValueError):
            return str(Path(path).relative_to(run_dir))
    return str(path)


def inputs_hash(paths: list[Path], run_dir: Path | None = None) -> tuple[str, list[str], str]:
    """(hash over the contents of the input files and their names, the inputs that are missing, the same hash
    with every name as given). Names inside run_dir count relative to it, so a copied run folder hashes alike;
    the as-given hash is what stage.json files before run-relative names hold. Each file is read once."""
    digest, as_given, missing = hashlib.sha256(), hashlib.sha256(), []
    for path in paths:
        if path.is_file():
            content = sha256_file(path)
            digest.update(f"{_name(path, run_dir)}:{content}\n".encode())
            as_given.update(f"{path}:{content}\n".encode())
        else:
            missing.append(str(path))
    return digest.hexdigest()[:16], missing, as_given.hexdigest()[:16]


def output_files(stage_dir: Path | None, extra: list[Path] = (),
                 run_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """{path: {size, sha256}} of every file a stage left (its folder, unless None, plus files it wrote
    elsewhere). The hash, not the size, tells a cached artifact is the one the stage made: a weight
    scaled in place keeps its size."""
    files = [p for p in sorted(stage_dir.rglob("*")) if p.is_file() and p.name != STATE_FILE
             and not is_temporary(p.relative_to(stage_dir))] if stage_dir is not None and stage_dir.is_dir() else []
    return {_name(p, run_dir): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in [*files, *extra]
            if p.is_file()}


def is_temporary(path: Path) -> bool:
    """Whether a path (relative to its stage folder) was written under a temporary name
    (deploy.files.atomic_path, export.openvino_int8.save_ir: `*.tmp`) or lies inside one: never an output."""
    return any(part.endswith(".tmp") for part in path.parts)


def remove_temporaries(stage_dir: Path) -> list[Path]:
    """Delete what a killed run left under temporary names in a stage folder; return what was removed."""
    if not stage_dir.is_dir():
        return []
    found = [p for p in stage_dir.rglob("*.tmp") if not is_temporary(p.parent.relative_to(stage_dir))]
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def output_changed(path: str, recorded: Any, run_dir: Path | None = None) -> bool:
    """True when a recorded output is missing or differs from what the stage wrote (older stage.json
    files recorded the size alone). A relative name is the run folder's (run_dir) when given."""
    p = Path(path) if run_dir is None else Path(run_dir) / path
    if not p.is_file():
        return True
    if isinstance(recorded, int):
        return p.stat().st_size != recorded
    return p.stat().st_size != recorded["size"] or sha256_file(p) != recorded["sha256"]


def read_state(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's stage.json, or None when missing or unreadable (a stage that never ran)."""
    try:
        state = json.loads((stage_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_state(stage_dir: Path, **state: Any) -> None:
    write_json(stage_dir / STATE_FILE, state)


@dataclass
class Status:
    """A stage's standing: done (skip), pending (never ran, or interrupted: resumes), failed (its gate or
    an error stopped it: reruns) or stale (settings, inputs or outputs changed: reruns from scratch)."""

    state: str
    reason: str = ""

    @property
    def runs(self) -> bool:
        return self.state != "done"


def stage_status(stage_dir: Path, cfg_hash: str, in_hash: str | tuple[str, ...], missing: list[str],
                 upstream_rerun: list[str]) -> Status:
    """Compare a stage's recorded state with its current config and input hashes (in_hash: the hash, or
    every hash that counts as unchanged: the run-relative one, and the one older stage.json files hold)."""
    state = read_state(stage_dir)
    if state is None:
        if (stage_dir / STATE_FILE).exists():
            return Status("stale", f"{stage_dir / STATE_FILE} is unreadable (empty, cut or not JSON): reruns")
        found = stage_dir.is_dir() and any(stage_dir.iterdir())
        return Status("pending", "has files from a run outside the pipeline: adopts them" if found else "never ran")
    if state.get("config_hash") != cfg_hash:
        return Status("stale", "its settings changed")
    if upstream_rerun:
        return Status("stale", f"upstream {', '.join(upstream_rerun)} will rerun")
    if missing:
        return Status("pending", f"input missing: {missing[0]}")
    if state.get("inputs_hash") not in (in_hash if isinstance(in_hash, tuple) else (in_hash,)):
        return Status("stale", "its inputs changed")
    if state.get("state") == "running":
        return Status("pending", f"interrupted (started {state.get('started', '?')}): resumes")
    if state.get("state") == "failed":
        return Status("failed", state.get("error", ""))
    run_dir = stage_dir.parent if state.get("names") == "run-relative" else None
    gone = [p for p, recorded in state.get("outputs", {}).items() if output_changed(p, recorded, run_dir)]
    if gone:
        return Status("stale", f"output changed or missing: {gone[0]}")
    return Status("done", f"finished {state.get('finished', '?')} in {state.get('wall_s', '?')} s")


def set_aside(stage_dir: Path, run_dir: Path) -> Path | None:
    """Move a stale stage's folder to <run>/.previous/<stage>/<UTC time it was set aside>, so a rerun from
    scratch cannot resume from, or mix in, files made under other settings, and no generation is lost
    (every earlier one stays beside it; delete them by hand when they are no longer wanted)."""
    if not stage_dir.is_dir():
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = run_dir / ".previous" / stage_dir.name / stamp
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(stage_dir), str(target))
    return target
