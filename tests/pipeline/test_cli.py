"""Each bad input ends the CLI with one line naming the file and field, and a non-zero exit."""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_coco

DEFAULT = str(REPO / "configs" / "pipelines" / "default.yaml")
CATS = [{"id": 1, "name": "a"}]


def cli(*args, process=False):
    """`edgekd *args`: in this process (its imports cost 5 s a process; bad input stops before any work),
    or, for runs whose worker processes or signal handling are under test, as a process of its own."""
    if process:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env)
    from pipeline.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, args)))
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def user_dataset(tmp_path, images=None, anns=()):
    """A tiny user COCO dataset and the overrides that point the default pipeline at it."""
    images = images or [{"id": 1, "file_name": "x.jpg", "width": 32, "height": 32}]
    for split in ("train", "val"):
        write_coco(tmp_path, images, list(anns), CATS, split=split)
    return [f"data.root={tmp_path}", "data.generator=null", f"runs_dir={tmp_path / 'runs'}"]


def test_unknown_config_key():
    assert_one_line_error(cli("run", "--config", DEFAULT, "data.rot=x"), "unknown key 'data.rot'",
                          "did you mean 'root'")


def test_unknown_stage():
    assert_one_line_error(cli("run", "--config", DEFAULT, "--stages", "dat"), "unknown stage 'dat'",
                          "valid stages: data")


def test_missing_dataset_folder(tmp_path):
    proc = cli("run", "--config", DEFAULT, f"data.root={tmp_path / 'nowhere'}", "data.generator=null",
               f"runs_dir={tmp_path / 'runs'}")
    assert_one_line_error(proc, "data.root: dataset folder not found", "nowhere")


def test_malformed_json(tmp_path):
    overrides = user_dataset(tmp_path)
    (tmp_path / "annotations" / "instances_val.json").write_text("{oops")
    assert_one_line_error(cli("run", "--config", DEFAULT, *overrides), "instances_val.json: not valid JSON")


def test_annotation_pointing_at_unknown_image(tmp_path):
    anns = [{"id": 9, "image_id": 4, "category_id": 1, "bbox": [0, 0, 5, 5]}]
    overrides = user_dataset(tmp_path, anns=anns)
    assert_one_line_error(cli("run", "--config", DEFAULT, *overrides),
                          "instances_train.json: annotations[0] (id 9): image_id 4 is not in 'images'")


def test_missing_image_is_caught_before_anything_else(tmp_path):
    overrides = user_dataset(tmp_path)
    (tmp_path / "train" / "x.jpg").unlink()
    assert_one_line_error(cli("run", "--config", DEFAULT, *overrides), "1 of 1 images are missing", "x.jpg")


def test_a_train_split_without_annotations_is_refused(tmp_path):
    overrides = user_dataset(tmp_path)  # images, no boxes: it would train to 0.0 AP without a word
    assert_one_line_error(cli("run", "--config", DEFAULT, "--stages", "data", *overrides),
                          "instances_train.json: the train split holds no annotations")


def test_debug_shows_the_traceback(tmp_path):
    proc = cli("run", "--config", DEFAULT, "--debug", f"data.root={tmp_path / 'nowhere'}", "data.generator=null",
               f"runs_dir={tmp_path / 'runs'}", process=True)  # the traceback is the interpreter's, at exit
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_valid_user_dataset_runs_and_writes_the_stage(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 0, 5]},  # dropped, reported
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 5]}]
    proc = cli("run", "--config", DEFAULT, "--no-progress", "--stages", "data", *user_dataset(tmp_path, anns=anns))
    assert proc.returncode == 0, proc.stderr
    assert "dropped 1 boxes with non-positive size" in proc.stdout
    stage = json.loads((tmp_path / "runs" / "default" / "data" / "stage.json").read_text())
    stats = json.loads((tmp_path / "runs" / "default" / "data" / "stats.json").read_text())
    assert stage["stage"] == "data" and stats["stats"]["val"]["boxes"] == 1
    assert (tmp_path / "runs" / "default" / "config.yaml").is_file()


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help(argv):
    assert cli(*argv).returncode == 0


def test_export_and_quantize_name_their_missing_inputs(tmp_path):
    overrides = user_dataset(tmp_path)
    assert_one_line_error(cli("run", "--config", DEFAULT, "--stages", "export", *overrides),
                          "checkpoint to export not found", "distill/last.pt", "export.checkpoint")
    assert_one_line_error(cli("run", "--config", DEFAULT, "--stages", "quantize", *overrides),
                          "export/model.onnx or its metrics.json missing", "make export")
    (tmp_path / "runs" / "default" / "export").mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "metrics.json"):  # exported without NMS in the graph, quantized with it
        (tmp_path / "runs" / "default" / "export" / name).write_text("{}")
    assert_one_line_error(cli("quantize", "--config", DEFAULT, *overrides, "export.nms=graph"),
                          "export/model.nms.onnx missing (export.nms: graph)", "make export")
    assert not (tmp_path / "runs" / "default" / "quantize" / "openvino").exists()  # nothing half-written


def test_an_unknown_quantize_artifact_lists_the_valid_ones():
    assert_one_line_error(cli("run", "--config", DEFAULT, "quantize.artifacts=[tflite_int8]"),
                          "quantize.artifacts[0]", "openvino_int8")


def test_an_input_error_marks_the_stage_failed_not_interrupted(tmp_path):
    """Before: the stage stayed `running`, and `status` said "interrupted: resumes"."""
    overrides = user_dataset(tmp_path)  # no annotations: the data stage refuses the train split
    assert_one_line_error(cli("run", "--config", DEFAULT, "--stages", "data", *overrides), "holds no annotations")
    state = json.loads((tmp_path / "runs" / "default" / "data" / "stage.json").read_text())
    assert state["state"] == "failed" and "the train split holds no annotations" in state["error"]
    status = cli("status", "--config", DEFAULT, *overrides)
    line = next(x for x in status.stdout.splitlines() if x.startswith("data"))
    assert "failed" in line and "holds no annotations" in line and "interrupted" not in line


def test_runs_dir_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    overrides = [*user_dataset(tmp_path)[:-1], f"runs_dir={tmp_path / 'file' / 'runs'}"]
    assert_one_line_error(cli("run", "--config", DEFAULT, "--stages", "data", *overrides),
                          "runs_dir: the run folder", "file/runs/default cannot be created (Not a directory)")


def test_a_file_system_error_is_one_line_naming_the_file(capsys):
    import errno

    from pipeline.cli import guarded

    def body():
        raise OSError(errno.EROFS, "Read-only file system", "runs/default/export/metrics.json")

    assert guarded(body) == 2
    assert capsys.readouterr().err == "error: runs/default/export/metrics.json: Read-only file system\n"


def test_an_up_to_date_run_writes_nothing(tmp_path):
    """A run where every stage is done leaves the folder untouched (so it also runs on a read-only copy)."""
    overrides = user_dataset(tmp_path, anns=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 5]}])
    assert cli("run", "--config", DEFAULT, "--no-progress", "--stages", "data", *overrides).returncode == 0
    run_dir = tmp_path / "runs" / "default"
    lock = run_dir / ".lock"  # the one file a run rewrites (its PID); where it cannot, it runs unlocked
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p != lock}
    assert cli("run", "--config", DEFAULT, "--no-progress", "--stages", "data", *overrides).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p != lock} == before
    for p in [run_dir, *run_dir.rglob("*")]:  # and on a folder it may not write at all
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        if os.geteuid() != 0:  # root writes anyway
            assert cli("run", "--config", DEFAULT, "--no-progress", "--stages", "data", *overrides).returncode == 0
    finally:
        for p in [run_dir, *run_dir.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_generating_the_dataset_prints_no_worker_tracebacks(tmp_path):
    """The pipeline's SIGTERM handler reached the generator's forked workers, and the pool's exit printed a
    ForkPoolWorker KeyboardInterrupt traceback from each."""
    proc = cli("run", "--config", DEFAULT, "--no-progress", "--stages", "data", "data.generator.size=tiny",
               "data.generator.workers=2", f"data.root={tmp_path / 'scenes'}", f"runs_dir={tmp_path / 'runs'}",
               process=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr


def test_a_setting_the_data_refutes_stops_before_any_stage_trains(tmp_path):
    """A student batch larger than the training split used to fail only after the teacher had trained."""
    overrides = user_dataset(tmp_path, anns=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 5]}])
    proc = cli("run", "--config", DEFAULT, "--no-progress", "stages=[data,teacher,student]", "teacher.checkpoint=null",
               "teacher.train.batch_size=1", "teacher.train.max_steps=1", *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: student.train.batch_size: 8 exceeds the 1 training images "
        f"({tmp_path}/annotations/instances_train.json); lower it, or add images")
    assert not (tmp_path / "runs" / "default" / "teacher").exists()


def test_the_edgekd_command_is_installed_and_runs(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "edgekd")
    assert os.path.isfile(exe), "`make setup` (pip install -e .) installs the edgekd console script"
    proc = subprocess.run([exe, "status", "--config", DEFAULT, f"runs_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == [
        "data", "teacher", "distill", "export", "quantize", "qat", "engines", "benchmark", "report"]


@pytest.mark.parametrize("command", ["train", "distill", "export", "quantize", "qat", "qat-ablation", "engines",
                                     "benchmark", "ablation", "ablation-heads", "detection-errors", "diagnose-bckd",
                                     "bench-train", "bench-openvino", "bench-nms", "ship-teacher"])
def test_every_edgekd_subcommand_is_its_module_command_line(command, capsys):
    from pipeline.__main__ import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: edgekd {command} ")


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_stops_at_once_and_the_first_is_intact(tmp_path):
    """Two runs on one folder used to resume each other's live stages and mix their outputs."""
    import time

    args = ["run", "--config", DEFAULT, "--no-progress", "--stages", "data", "data.generator.size=tiny",
            "data.generator.num_train=600", "data.generator.num_val=8", "data.generator.workers=1",
            f"data.root={tmp_path / 'scenes'}", f"runs_dir={tmp_path / 'runs'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    lock = tmp_path / "runs" / "default" / ".lock"
    try:
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text().startswith(str(first.pid))):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        second = cli(*args)
        status = cli("status", "--config", DEFAULT, f"runs_dir={tmp_path / 'runs'}")  # reads without the lock
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]  # still running when the second was refused
    assert_one_line_error(second, f"{tmp_path / 'runs' / 'default'}: in use by another edgekd process (PID {first.pid}")
    assert status.returncode == 0 and status.stdout.splitlines()[1].split()[0] == "data"
    stats = json.loads((tmp_path / "runs" / "default" / "data" / "stats.json").read_text())
    assert stats["stats"]["train"]["images"] == 600
    again = cli("status", "--config", DEFAULT, *args[6:])
    assert again.stdout.splitlines()[1].split()[1] == "done", again.stdout
    assert cli(*args).returncode == 0  # released when the first ended


def test_overrides_may_stand_before_the_options(tmp_path):
    """`edgekd run run=x --stages data` said 'unrecognized arguments: run=x'."""
    proc = cli("run", f"runs_dir={tmp_path}", "run=x", "--stages", "dat", "--config", DEFAULT)
    assert_one_line_error(proc, "unknown stage 'dat'")
    status = cli("status", f"runs_dir={tmp_path}", "run=x", "--config", DEFAULT)
    assert status.returncode == 0 and status.stdout.splitlines()[0] == f"# {tmp_path / 'x'}"


def test_status_and_help_load_no_training_or_runtime_code(tmp_path):
    """`edgekd --help` and `status` took 5 s importing torch and the trainer; they read configs only."""
    heavy = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "scipy")
    code = ("import io, sys, contextlib\nfrom pipeline.__main__ import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    main(['status', 'runs_dir={tmp_path}'])\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "scipy", "matplotlib")


def _all_commands() -> list[str]:
    from pipeline.__main__ import all_commands

    return list(all_commands())


@pytest.mark.parametrize("command", _all_commands())
def test_every_subcommand_help_and_usage_error_load_no_heavy_package(command):
    """`edgekd train --help` took 5 s importing torch, onnx and the trainer at the top of its module; every
    command's --help and argument errors now print before any of them loads (as `python -m pipeline`)."""
    code = ("import atexit, runpy, sys\n"
            f"atexit.register(lambda: print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
            "runpy.run_module('pipeline', run_name='__main__')")
    for args, status in ((["--help"], 0), (["--no-such-option"], 2)):
        proc = subprocess.run([sys.executable, "-c", code, command, *args], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == status, proc.stderr[-2000:]
        assert (proc.stdout if status == 0 else proc.stderr).startswith("usage: "), (proc.stdout + proc.stderr)[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == "[]", (
            f"{command} {args[0]} imported {proc.stdout.splitlines()[-1]}")


def test_debug_shows_the_library_error_behind_the_line(tmp_path):
    """Every re-raise used `from None`: --debug showed our line's traceback without its cause."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    plain = cli("run", "--config", bad)
    assert_one_line_error(plain, f"{bad}: not valid YAML")
    debug = cli("run", "--config", bad, "--debug", process=True)
    assert debug.returncode == 1 and "yaml.parser.ParserError" in debug.stderr
    assert "The above exception was the direct cause of the following exception" in debug.stderr
    assert "pipeline.config.ConfigError" in debug.stderr
