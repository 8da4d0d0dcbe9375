"""Train the pipeline's teacher (or its student alone, as the no-distillation baseline).

    python -m pipeline.stages.train --config configs/pipelines/default.yaml --role teacher [--resume] [key=value ...]
    torchrun --standalone --nproc_per_node=2 -m pipeline.stages.train --role teacher --resume   # DDP, gloo on CPU
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --nproc_per_node=8 -m pipeline.stages.train --role teacher                                  # multi-node

Writes runs/<run>/<role>/: last.pt, best.pt, log.jsonl, metrics.json, predictions.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.coco import CocoDataset
from deploy.evaluate import format_metrics, write_evaluation
from deploy.files import write_json
from pipeline import paths
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, given_teacher, load_config
from pipeline.run_lock import run_lock
from pipeline.stages.data import check_schedule_fits, load_split, monitor_split, run_data

if TYPE_CHECKING:
    from torch import nn

# torch and the trainer are imported by the functions that train, so that `edgekd train --help` loads neither.


def run_teacher_stage(cfg: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
    """The teacher stage: train the teacher and profile its checkpoint, or load the one given once (checked
    in load_teacher), measure it and profile that model."""
    from pipeline.stages.profile import profile_model, write_profile

    if not given_teacher(cfg.teacher):
        metrics = train_role(cfg, "teacher", resume=True, progress=progress)
        write_profile(cfg, paths.trained_checkpoint(cfg, "teacher"), out)
        return metrics
    model, source, metrics, val = measure_teacher(cfg, progress)
    bc = cfg.benchmark
    # The profile is the PyTorch CPU latency beside the deployed artifacts', whatever device measured AP.
    write_json(out / "profile.json", profile_model(model.cpu(), source, val, bc.warmup, bc.iters, bc.threads))
    return metrics


def _prepare(cfg: PipelineConfig, role: str, progress: bool) -> tuple[Any, CocoDataset, CocoDataset]:
    """(process group info, train split, val split), the data generated and validated first."""
    import torch.distributed as dist

    from distill.trainer import setup_distributed

    info = setup_distributed(getattr(cfg, role).train.device)
    if info.main:
        run_data(cfg.data, cfg.run_dir / "data", progress)  # generates when missing; validates up front
    if info.world > 1:
        dist.barrier()
    return info, load_split(cfg.data, "train"), load_split(cfg.data, "val")


def measure_teacher(cfg: PipelineConfig, progress: bool = True) -> tuple[nn.Module, str, dict[str, Any], CocoDataset]:
    """A teacher given rather than trained (teacher.checkpoint, mmdetection, torchvision): loaded and checked
    once, measured on val (<run>/teacher/metrics.json); returns (model, its source, val metrics, val)."""
    from distill.teachers import load_teacher
    from distill.validate import evaluate_model

    info, train_set, val_set = _prepare(cfg, "teacher", progress)
    model, teacher_info = load_teacher(cfg, train_set.class_names, check_model=True)
    tc = cfg.teacher
    metrics, results = evaluate_model(model, val_set, tuple(tc.model.input_size), tc.train.batch_size, info.device,
                                      progress)
    if info.main:
        write_evaluation(str(cfg.run_dir / "teacher"), metrics, results)
        print(f"teacher (from {teacher_info.source}, {teacher_info.kind}): val {format_metrics(metrics)}")
    return model, teacher_info.source, metrics, val_set


def run_student_stage(cfg: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
    """The student stage: the student trained alone, profiled."""
    from pipeline.stages.profile import write_profile

    metrics = train_role(cfg, "student", resume=True, progress=progress)
    write_profile(cfg, paths.trained_checkpoint(cfg, "student"), out)
    return metrics


def train_role(cfg: PipelineConfig, role: str, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train cfg.<role> on cfg.data (or evaluate the given checkpoint); return its val metrics."""
    from distill.checkpoint import load_model_state
    from distill.losses.detection import make_detection_loss
    from distill.models.detector import build_detector
    from distill.trainer import train
    from distill.validate import evaluate_model
    from distill.weights_file import check_weights
    from pipeline.reuse import refuse_other_settings

    if role == "teacher" and given_teacher(cfg.teacher):  # nothing to train: measure it
        return measure_teacher(cfg, progress)[2]
    role_cfg = getattr(cfg, role)
    out_dir = cfg.run_dir / role
    info, train_set, val_set = _prepare(cfg, role, progress)
    input_size = tuple(role_cfg.model.input_size)
    model = build_detector(role_cfg.model, num_classes=len(train_set.categories), seed=role_cfg.train.seed)
    if not role_cfg.checkpoint:
        check_schedule_fits(cfg.data, role_cfg.train, role, len(train_set.images))
    if role_cfg.checkpoint:  # the student alone's (a given teacher is measured above)
        state = check_weights(role_cfg.checkpoint, role_cfg.model, train_set.class_names, role_cfg.checkpoint_sha256,
                              f"{role}.checkpoint")
        load_model_state(model, state["model"], role_cfg.checkpoint)
        metrics, results = evaluate_model(model, val_set, input_size, role_cfg.train.batch_size, info.device, progress)
        if info.main:
            write_evaluation(str(out_dir), metrics, results)
            print(f"{role} (from {role_cfg.checkpoint}): val {format_metrics(metrics)}")
        return metrics
    if resume:
        refuse_other_settings(out_dir, role, role_cfg.train, role_cfg.model)
    loss_fn = make_detection_loss(role_cfg.model)
    extra = {"config": asdict(role_cfg.model), "classes": train_set.class_names}
    return train(model, loss_fn, role_cfg.train, train_set, val_set, out_dir, input_size, extra,
                 resume=resume, progress=progress, dist_info=info,
                 monitor_set=monitor_split(cfg.data, role_cfg.train, role))


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd train", description=__doc__.split("\n")[0]))
    parser.add_argument("--role", choices=("teacher", "student"), default="teacher")
    parser.add_argument("--resume", action="store_true", help="continue from <run>/<role>/last.pt if it exists")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        with run_lock(cfg.run_dir, "edgekd train"):
            metrics = train_role(cfg, args.role, args.resume, progress=not args.no_progress and sys.stderr.isatty())
            if metrics:
                print(f"{args.role}: val {format_metrics(metrics)} -> {Path(cfg.run_dir) / args.role}")

    return guarded(body, args.debug, "interrupted: rerun with --resume to continue from the last checkpoint")


if __name__ == "__main__":
    sys.exit(main())
