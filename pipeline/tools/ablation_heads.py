"""Distillation ablation across heads (a benchmark, not a test): for RetinaNet, FCOS and ATSS (and GFL),
train the embedded-default teacher of that head, then its student without distillation and with
BCKD, same seed, data and schedule as the GFL ablation.

    python -m pipeline.tools.ablation_heads [--heads retinanet,fcos,atss,gfl] [--variants none,bckd] [key=value ...]

Each head's run lives in runs/head-<head>/ (teacher) and runs/ablation-heads/<head>/ (students);
finished parts are reused. Writes runs/ablation-heads/ablation-heads.{md,json}: per head the teacher,
the student alone, the BCKD student, the gain and the share of the teacher-student gap closed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deploy.errors import InputError
from deploy.files import write_json, write_text
from deploy.tables import markdown_table
from pipeline import paths
from pipeline.cli import guarded
from pipeline.config import load_config
from pipeline.tools.ablation import COLUMNS, run_ablation


def head_overrides(head: str) -> list[str]:
    """The default pipeline with `head`'s embedded-default teacher/student pair (configs/models/)."""
    return [f"run=head-{head}", f"teacher.model=configs/models/{head}_effl2_teacher.yaml",
            f"student.model=configs/models/{head}_effl0_student.yaml"]


def _fmt(x: float | None) -> str:
    return f"{x:.1f}" if x is not None else ""


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for head, r in results.items():
        t, base, bckd = (100 * r[k]["AP"] if r.get(k) else None for k in ("teacher", "none", "bckd"))
        gain = f"{bckd - base:+.1f}" if None not in (base, bckd) else ""
        closed = f"{100 * (bckd - base) / (t - base):.0f}%" if None not in (t, base, bckd) and t != base else ""
        ap50 = " / ".join(f"{100 * r[k]['AP50']:.1f}" for k in ("none", "bckd") if r.get(k))
        rows.append([head, _fmt(t), _fmt(base), _fmt(bckd), gain, closed, ap50])
    return markdown_table(["head", "teacher AP", "student alone AP", "BCKD student AP", "BCKD gain", "gap closed",
                           "AP50 alone / BCKD"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd ablation-heads", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/pipelines/default.yaml")
    parser.add_argument("--heads", default="retinanet,fcos,atss")
    parser.add_argument("--variants", default="none,bckd")
    parser.add_argument("--out", default="runs/ablation-heads")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        from distill.models.heads import HEAD_NAMES  # torch: not for `edgekd ablation-heads --help`
        from pipeline.stages.train import train_role

        heads = args.heads.split(",")
        unknown = [h for h in heads if h not in HEAD_NAMES]
        if unknown:
            raise InputError(f"--heads: unknown head '{unknown[0]}'; valid: {', '.join(HEAD_NAMES)}")
        out = Path(args.out)
        results: dict[str, dict[str, Any]] = {}
        for head in heads:
            cfg = load_config(args.config, [*head_overrides(head), *args.overrides])
            print(f"[ablation-heads] {head}: teacher -> {cfg.run_dir / 'teacher'}", flush=True)
            train_role(cfg, "teacher", resume=True, progress=sys.stderr.isatty())
            rows, teacher = run_ablation(cfg, paths.trained_checkpoint(cfg, "teacher"), args.variants.split(","),
                                         out / head)
            results[head] = {"teacher": {c: teacher.get(c) for c in COLUMNS}, **rows}
            text = table(results)
            write_text(out / "ablation-heads.md", "# BCKD across heads (embedded default, AP in percent on val)\n\n"
                       + text + "\n")
            write_json(out / "ablation-heads.json", results)
        print(text)

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
