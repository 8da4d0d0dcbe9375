"""docs/data/plateau_curves.py: the script behind docs/data/plateau-curves.json."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "data" / "plateau_curves.py"


def _load():
    spec = importlib.util.spec_from_file_location("plateau_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(run: Path, aps: list, finished: bool, extra: str = "") -> None:
    run.mkdir(parents=True)
    lines = [json.dumps({"step": 10 * e, "loss": 1.0}) + "\n" + json.dumps(
        {"step": 10 * e, "epoch": e, "select": {"AP": ap, "AP50": ap + 0.1}}) for e, ap in enumerate(aps, 1)]
    (run / "log.jsonl").write_text("\n".join(lines) + "\n" + extra)
    if finished:
        (run / "metrics.json").write_text("{}")


def test_curves_per_seed_with_the_plateau_rule_on_the_logged_fractions(tmp_path):
    study = tmp_path / "study"
    # gains over two epochs: 0.20, 0.10, then 0.0049 (< 0.005) at epoch 5; a cut last line is skipped
    _log(study / "none", [0.10, 0.25, 0.30, 0.35, 0.3049], finished=True, extra='{"step": 6')
    # epoch 1 logged twice (a resumed run): the last record, 0.4500, wins over 0.4540 (which would make epoch 3
    # a plateau); and a gain of exactly 0.5 AP (0.4550 - 0.4500) is not one
    resumed = json.dumps({"step": 10, "epoch": 1, "select": {"AP": 0.4500, "AP50": 0.5}}) + "\n"
    _log(study / "seed1" / "none", [0.4540, 0.4520, 0.4550], finished=False, extra=resumed)
    (study / "seed1.bak").mkdir()  # not a seed folder
    out = _load().main(study)["runs"]["none"]
    assert set(out) == {"0", "1"}
    assert out["0"]["finished"] and out["0"]["plateau_epoch"] == 5
    assert [p["select_AP"] for p in out["0"]["curve"]] == [10.0, 25.0, 30.0, 35.0, 30.49]
    assert not out["1"]["finished"] and out["1"]["plateau_epoch"] is None
    assert [p["select_AP"] for p in out["1"]["curve"]] == [45.0, 45.2, 45.5]
