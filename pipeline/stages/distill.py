"""Distil the pipeline's student from its teacher (BCKD by default; KD, LD or none for comparison).

    python -m pipeline.stages.distill --config configs/pipelines/default.yaml [--teacher PATH] [key=value ...]
    torchrun --standalone --nproc_per_node=2 -m pipeline.stages.distill --resume     # DDP, gloo on CPU

The teacher is runs/<run>/teacher/last.pt unless --teacher or teacher.checkpoint names another.
Writes runs/<run>/distill/: last.pt and best.pt (the student only), log.jsonl with every raw and
weighted loss term, metrics.json and predictions.json through the deploy/ evaluator.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploy.evaluate import format_metrics
from pipeline import paths
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.run_lock import run_lock
from pipeline.stages.data import check_schedule_fits, load_split, monitor_split, run_data

# torch and the trainer are imported by the functions that train, so that `edgekd distill --help` loads neither.


def distill_student(cfg: PipelineConfig, teacher_file: str | None = None, resume: bool = True,
                    progress: bool = True, out_name: str = "distill") -> dict[str, Any]:
    """Train cfg.student with cfg.distill's terms from the teacher; return its val metrics."""
    import torch.distributed as dist

    from distill.distiller import Distiller, check_pair
    from distill.models.detector import build_detector
    from distill.teachers import load_teacher
    from distill.trainer import setup_distributed, train
    from pipeline.reuse import refuse_other_settings

    info = setup_distributed(cfg.student.train.device)
    if info.main:
        run_data(cfg.data, cfg.run_dir / "data", progress)
    if info.world > 1:
        dist.barrier()
    train_set, val_set = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    check_schedule_fits(cfg.data, cfg.student.train, "student", len(train_set.images))
    teacher, teacher_info = load_teacher(cfg, train_set.class_names, teacher_file)
    if resume:
        refuse_other_settings(cfg.run_dir / out_name, "student", cfg.student.train, cfg.student.model, cfg.distill,
                              Path(teacher_info.source))
    teacher_size = tuple(teacher.cfg.input_size)
    # Seeded after the teacher is built: every variant (and `make student`) starts from the same init.
    student = build_detector(cfg.student.model, num_classes=len(train_set.categories), seed=cfg.student.train.seed)
    input_size = tuple(cfg.student.model.input_size)
    check_pair(teacher, student, teacher_info.classes, train_set.class_names, input_size, teacher_info.source,
               teacher_size)
    distiller = Distiller(teacher, cfg.student.model, cfg.distill, info.device, cfg.student.train.channels_last)
    extra = {"config": asdict(cfg.student.model), "classes": train_set.class_names,
             "distill": asdict(cfg.distill), "teacher": teacher_info.source}
    return train(student, distiller, cfg.student.train, train_set, val_set, cfg.run_dir / out_name, input_size,
                 extra, resume=resume, progress=progress, dist_info=info,
                 monitor_set=monitor_split(cfg.data, cfg.student.train, "student"))


def run_stage(cfg: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
    """The distill stage: distil, then profile the student."""
    from pipeline.stages.profile import write_profile

    metrics = distill_student(cfg, resume=True, progress=progress)
    write_profile(cfg, paths.distilled_checkpoint(cfg), out)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd distill", description=__doc__.split("\n")[0]))
    parser.add_argument("--teacher", help="teacher checkpoint (default: runs/<run>/teacher/last.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from <run>/distill/last.pt if it exists")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        with run_lock(cfg.run_dir, "edgekd distill"):
            metrics = distill_student(cfg, args.teacher or None, args.resume,
                                      progress=not args.no_progress and sys.stderr.isatty())
            if metrics:
                print(f"distilled student ({cfg.distill.method}): val {format_metrics(metrics)} "
                      f"-> {cfg.run_dir / 'distill'}")

    return guarded(body, args.debug, "interrupted: rerun with --resume to continue from the last checkpoint")


if __name__ == "__main__":
    sys.exit(main())
