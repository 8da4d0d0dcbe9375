"""Selection-split AP after every epoch, per variant and seed, from the run folders of an `edgekd ablation`
study trained with student.train.monitor=select (the config's own seed, 0 in every study here, in
<study>/<variant>; seed k in <study>/seed<k>/<variant>), whether each run finished (its metrics.json exists),
and the first epoch at which the plateau rule holds (under 0.5 AP gained over the last two epochs).
Standard library only; reads log.jsonl, trains nothing.

Usage: python docs/data/plateau_curves.py runs/study-plateau > docs/data/plateau-curves.json"""
import json
import re
import sys
from pathlib import Path

RULE_AP = 0.005  # 0.5 AP, as the fraction the log records


def curve(log: Path) -> dict:
    """{epoch: the selection metrics}; a resumed run logs an epoch again after a cut, and the last record wins."""
    points = {}
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if "select" in record:
            points[record["epoch"]] = record["select"]
    return dict(sorted(points.items()))


def plateau_epoch(points: dict):
    """On the logged fractions, not the rounded percentages, so that a gain of exactly 0.5 is not misread."""
    return next((e for e in points if e - 2 in points and points[e]["AP"] - points[e - 2]["AP"] < RULE_AP), None)


def seed_dirs(study: Path) -> list:
    found = [(study, 0)]
    for d in study.iterdir():
        match = re.fullmatch(r"seed(\d+)", d.name)
        if match and d.is_dir():
            found.append((d, int(match.group(1))))
    return sorted(found, key=lambda pair: pair[1])


def main(study: Path) -> dict:
    runs = {}
    for seed_dir, seed in seed_dirs(study):
        for log in sorted(seed_dir.glob("*/log.jsonl")):
            points = curve(log)
            if points:
                runs.setdefault(log.parent.name, {})[str(seed)] = {
                    "finished": (log.parent / "metrics.json").exists(), "plateau_epoch": plateau_epoch(points),
                    "curve": [{"epoch": e, "select_AP": round(100 * m["AP"], 2),
                               "select_AP50": round(100 * m["AP50"], 2)} for e, m in points.items()]}
    return {"what": "selection-split AP (percent) after every epoch, per variant and seed",
            "stop_rule": "the first epoch whose selection AP is less than 0.5 AP above the one two epochs before",
            "command": f"python docs/data/plateau_curves.py {study}", "runs": runs}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
