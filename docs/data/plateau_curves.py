"""Selection-split AP after every epoch, per variant and seed, from the run folders of an `edgekd ablation`
study trained with student.train.monitor=select (seed 0 in <study>/<variant>, seed k in
<study>/seed<k>/<variant>), and the first epoch at which the plateau rule holds (under 0.5 AP gained over
the last two epochs). Standard library only; reads log.jsonl, trains nothing.

Usage: python docs/data/plateau_curves.py runs/study-plateau > docs/data/plateau-curves.json"""
import json
import sys
from pathlib import Path

RULE_AP = 0.005  # 0.5 AP, as a fraction


def curve(log: Path) -> list:
    """One point per epoch; a resumed run logs an epoch again after a cut, and the last record wins."""
    points = {}
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if "select" in record:
            points[record["epoch"]] = {"epoch": record["epoch"], "select_AP": round(100 * record["select"]["AP"], 2),
                                       "select_AP50": round(100 * record["select"]["AP50"], 2)}
    return [points[e] for e in sorted(points)]


def plateau_epoch(points: list):
    ap = {p["epoch"]: p["select_AP"] / 100 for p in points}
    return next((e for e in sorted(ap) if e - 2 in ap and ap[e] - ap[e - 2] < RULE_AP), None)


def main(study: Path) -> dict:
    runs = {}
    for seed_dir, seed in [(study, 0), *((d, int(d.name[4:])) for d in sorted(study.glob("seed[0-9]*")))]:
        for log in sorted(seed_dir.glob("*/log.jsonl")):
            points = curve(log)
            if points:
                runs.setdefault(log.parent.name, {})[str(seed)] = {"plateau_epoch": plateau_epoch(points),
                                                                    "curve": points}
    return {"what": "selection-split AP (percent) after every epoch, per variant and seed",
            "stop_rule": "the first epoch whose selection AP is less than 0.5 AP above the one two epochs before",
            "command": f"python docs/data/plateau_curves.py {study}", "runs": runs}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
