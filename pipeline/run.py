"""Run the pipeline's stages in order, skipping those already done, and resuming or rerunning the rest.

Each stage declares the config sections it reads and the files it consumes. Their hashes go into
<run>/<stage>/stage.json (pipeline/stage_state.py). On the next run a stage whose hashes match is
skipped; one interrupted with the same hashes resumes (training from its last checkpoint); one whose
settings or inputs changed is set aside to <run>/.previous/<stage>/<time> and rerun from scratch, and the
stages after it see new inputs and rerun too. Every artifact is written under a temporary name and
renamed into place, so no stage reads a half-written file after a kill.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

from deploy.errors import GateError, InputError
from deploy.files import write_text
from pipeline import paths
from pipeline.config import ConfigError, PipelineConfig, given_teacher, to_yaml
from pipeline.gates import check_gate
from pipeline.run_lock import run_lock
from pipeline.stage_state import (
    Status,
    config_hash,
    inputs_hash,
    now,
    output_files,
    read_state,
    remove_temporaries,
    set_aside,
    stage_status,
    versions,
    write_state,
)
from pipeline.stage_table import call, gate_keys, get, names


def select_stages(cfg: PipelineConfig, requested: list[str] | None = None, start: str | None = None) -> list[str]:
    """The stages to run in pipeline order: `requested`, or the config's list (from `start` on)."""
    wanted, known = requested or cfg.stages, names()
    unknown = [n for n in [*wanted, *([start] if start else [])] if n not in known]
    if unknown:
        raise ConfigError(f"unknown stage '{unknown[0]}'; valid stages: {', '.join(known)}")
    selected = [s for s in known if s in wanted]
    if start:
        if start not in selected:
            raise ConfigError(f"--from {start}: not among the stages to run ({', '.join(selected)})")
        selected = selected[selected.index(start):]
    return selected


def hashes(cfg: PipelineConfig, name: str) -> tuple[str, tuple[str, str], list[str]]:
    """(config hash, inputs hashes, missing inputs) of a stage now: the inputs hash with names relative to
    the run folder (what is recorded), then with names as given (what stage.json files before it hold)."""
    stage = get(name)
    in_hash, missing, as_given = inputs_hash(stage.inputs(cfg), cfg.run_dir)
    return config_hash({s: getattr(cfg, s) for s in stage.sections}, gate_keys()), (in_hash, as_given), missing


def pipeline_status(cfg: PipelineConfig) -> dict[str, Status]:
    """Each of the config's stages as done, stale, failed or pending, as `run` would find them; a stage
    after one that will rerun is stale (it reruns if that stage's outputs change)."""
    out: dict[str, Status] = {}
    for name in [s for s in names() if s in cfg.stages]:
        rerun = [u for u in get(name).upstream if u in out and out[u].runs]
        cfg_hash, in_hash, missing = hashes(cfg, name)
        out[name] = stage_status(cfg.run_dir / name, cfg_hash, in_hash, [] if rerun else missing, rerun)
    return out


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, `kill`) stops like Ctrl-C: the stage stays `running` and resumes next time."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(cfg: PipelineConfig, name: str, force: bool, progress: bool) -> dict[str, Any] | None:
    """Skip, resume or (re)run one stage; check its gate either way. Returns its result when it ran."""
    stage, out = get(name), cfg.run_dir / name
    cfg_hash, in_hash, missing = hashes(cfg, name)
    status = stage_status(out, cfg_hash, in_hash, missing, [])
    result = None
    if status.state == "done" and not force:
        print(f"[{name}] up to date ({status.reason})", flush=True)
    else:
        if force or status.state == "stale":
            moved = set_aside(out, cfg.run_dir)
            if moved:
                print(f"[{name}] {'forced' if force else status.reason}: earlier outputs moved to {moved}", flush=True)
        print(f"[{name}] start" + (f" ({status.reason})" if status.state in ("pending", "failed") else ""), flush=True)
        started, start = now(), time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        for left in remove_temporaries(out):
            print(f"[{name}] removed {left} (left by an interrupted run)", flush=True)
        record = {"stage": name, "config_hash": cfg_hash, "inputs_hash": in_hash[0], "started": started,
                  "names": "run-relative"}
        write_state(out, state="running", **record)
        try:
            result = call(stage.run, cfg, out, progress)
        except Exception as e:  # bad input, a gate, a diverged loss: `failed` with the line, not `running`
            write_state(out, state="failed", error=one_line(e), **record)
            raise
        wall = round(time.perf_counter() - start, 1)
        write_state(out, state="done", **record, finished=now(), wall_s=wall,
                    outputs=output_files(out if stage.track_folder else None, stage.extra_outputs(cfg), cfg.run_dir),
                    versions=versions(), summary=summary(result))
        print(f"[{name}] done in {wall:.1f}s" + (f": {summary(result)}" if summary(result) else ""), flush=True)
    try:
        gate = check_gate(name, cfg)
    except GateError as e:
        state = read_state(out) or {}
        write_state(out, **{**state, "state": "failed", "error": str(e)})
        raise
    if gate:
        print(f"[{name}] gate passed: {gate}", flush=True)
        state = read_state(out) or {}
        if state.get("gate") != gate:  # rewritten only on change: the report stage hashes stage.json
            write_state(out, **{**state, "gate": gate})
    return result


def one_line(error: BaseException) -> str:
    """An error as the one line stage.json and `status` show."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def summary(result: Any) -> str:
    """A stage result's headline for its done line."""
    if not isinstance(result, dict):
        return ""
    if isinstance(result.get("AP"), float):  # a training stage's measurement of its checkpoint
        return f"AP {100 * result['AP']:.2f}"
    if result.get("artifacts"):
        return ", ".join(f"{n} AP {100 * m['AP']:.2f}" for n, m in result["artifacts"].items())
    if isinstance(result.get("skipped"), str):
        return "skipped"
    return ""


def check_against_data(cfg: PipelineConfig, selected: list[str]) -> None:
    """Refuse, before any stage trains, a training setting the data refutes (a batch larger than the training
    split), rather than after an earlier stage has trained for an hour. Reads the data stage's counts."""
    try:
        images = json.loads(paths.data_stats(cfg).read_text())["stats"]["train"]["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no counts yet: the trainer checks the same when it starts
    for stage in selected:
        role = {"teacher": "teacher", "student": "student", "distill": "student"}.get(stage)
        if role is None or (role == "teacher" and given_teacher(cfg.teacher)):  # nothing trains
            continue
        train = getattr(cfg, role).train
        usable = min(train.max_train_images or images, images)
        if train.batch_size > usable:
            raise InputError(f"{role}.train.batch_size: {train.batch_size} exceeds the {usable} training images "
                             f"({cfg.data.split_paths('train')[0]}); lower it, or add images")


def run_pipeline(cfg: PipelineConfig, stages: list[str] | None = None, progress: bool = True,
                 start: str | None = None) -> dict[str, Any]:
    """Run the selected stages (`start` and every stage after it forced to rerun); return the results of
    the stages that ran."""
    selected = select_stages(cfg, stages, start)
    run_dir = cfg.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"runs_dir: the run folder {run_dir} cannot be created ({e.strerror})") from e
    with run_lock(run_dir, "edgekd run"):
        config_file, config_text = run_dir / "config.yaml", to_yaml(cfg)
        # Rewritten only on change, so an up-to-date run reads a folder it may not write (a read-only mount).
        if not config_file.is_file() or config_file.read_text(encoding="utf-8") != config_text:
            write_text(config_file, config_text)
        results: dict[str, Any] = {}
        begin, checked = time.perf_counter(), False
        with sigterm_as_interrupt():
            for name in selected:
                stale_upstream = [u for u in get(name).upstream
                                  if u in cfg.stages and u not in selected
                                  and (read_state(run_dir / u) or {}).get("state") != "done"]
                if stale_upstream:
                    print(f"[{name}] note: upstream {', '.join(stale_upstream)} not done and not selected; "
                          "using the files it left", flush=True)
                if name in ("teacher", "student", "distill") and not checked:
                    check_against_data(cfg, selected)
                    checked = True
                result = run_stage(cfg, name, force=start is not None, progress=progress)
                if result is not None:
                    results[name] = result
        print(f"pipeline: {len(selected)} stages in {time.perf_counter() - begin:.1f}s", flush=True)
        if (run_dir / "report.md").is_file() and "report" in selected:
            print(f"report: {run_dir / 'report.md'} (and report.html, report.json)", flush=True)
    return results


def format_status(statuses: dict[str, Status]) -> str:
    width = max(map(len, statuses)) if statuses else 5
    return "\n".join(f"{name:<{width}}  {s.state:<8} {s.reason}" for name, s in statuses.items())

