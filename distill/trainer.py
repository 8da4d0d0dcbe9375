"""One training loop for teacher training and (with a distillation loss) for students.

    python -m pipeline.stages.train --config configs/pipelines/default.yaml --role teacher      # one process
    torchrun --standalone --nproc_per_node=2 -m pipeline.stages.train --role teacher ...         # DDP (gloo/NCCL)

Per step: forward, the named loss terms (checked finite), backward, optional clipping, optimizer and
per-step LR schedule (linear warm-up, then step or cosine decay). Rank 0 alone writes: a tqdm bar,
log.jsonl, last.pt every epoch (and every save_every_steps), best.pt at the best val AP, and the final
metrics.json / predictions.json through the deploy/ evaluator. Resume continues at the same step with
the same optimizer, scheduler, scaler and RNG state; augmentation is seeded per (seed, epoch, index),
so the batches after a resume are the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from deploy import metrics_file
from deploy.coco import CocoDataset
from deploy.errors import InputError
from deploy.evaluate import format_metrics, write_evaluation
from deploy.files import read_jsonl, write_json, write_text
from distill.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from distill.data.dataset import DetectionDataset, collate
from distill.settings import NonFiniteLoss, TrainConfig
from distill.validate import evaluate_model, subset

LossFn = Callable[[nn.Module, torch.Tensor, list], dict[str, torch.Tensor]]




DIVERGED = "diverged.json"  # written beside last.pt when the loss or the weights turned non-finite


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when launched by it (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        dev = torch.device(device if device.startswith("cuda:") else f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(rank=dist.get_rank() if world > 1 else 0, world=world, device=dev)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """LR multiplier at a global step: linear warm-up, then step decay or cosine."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        progress = min(step / max(total, 1), 1.0)
        factor = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = cfg.gamma ** sum(step >= e * steps_per_epoch for e in cfg.decay_epochs)
    if step < cfg.warmup_steps:
        factor *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_steps
    return factor


def total_steps_for(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return min(cfg.max_steps or cfg.epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_log(path: Path, step: int) -> None:
    """After a resume, drop log lines past the checkpoint's step (they will be logged again), and a line a kill
    cut mid-write (it would not parse, and the readers of the log skip it anyway)."""
    if path.is_file():
        keep = [record for record in read_jsonl(path) if record.get("step", 0) <= step]
        write_text(path, "".join(json.dumps(record) + "\n" for record in keep))


@dataclass
class Session:
    """What one training session carries between its pieces: the model and its optimizer state, where it
    writes, and how far it got."""

    model: nn.Module
    cfg: TrainConfig
    out_dir: Path
    info: DistInfo
    steps_per_epoch: int
    extra_state: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    step: int = 0
    best_ap: float = -1.0
    saved_step: int | None = None  # what last.pt holds when this session saved it, for the divergence message
    saved_max_abs_weight: float | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch


def resume_or_start(s: Session, resume: bool) -> None:
    """Load out_dir/last.pt into the session (weights, optimizer, scheduler, scaler, RNG, step) when resuming,
    else start clean: no log lines and no divergence mark of an earlier run."""
    last = s.out_dir / "last.pt"
    if not (resume and last.is_file()):
        if s.info.main:
            if resume:
                print(f"resume: no checkpoint at {last}; starting from step 0")
            _truncate_log(s.out_dir / "log.jsonl", 0)
            (s.out_dir / DIVERGED).unlink(missing_ok=True)
        return
    if (s.out_dir / DIVERGED).is_file():  # the same seeded steps from the same checkpoint diverge again
        raise NonFiniteLoss(f"{s.out_dir / DIVERGED}: this run diverged before "
                            f"({json.loads((s.out_dir / DIVERGED).read_text()).get('error', '?')}); remove "
                            f"{s.out_dir} (or move it away) and train again with other settings")
    state = load_checkpoint(last)
    load_model_state(s.model, state["model"], str(last))
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    s.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    s.step, s.best_ap = state["step"], state.get("best_ap", -1.0)
    if s.info.main:
        print(f"resumed from {last} at step {s.step} (epoch {s.epoch})")
        _truncate_log(s.out_dir / "log.jsonl", s.step)


def save(s: Session, path: Path) -> None:
    """Write a resumable checkpoint, never one with non-finite weights: an optimizer step can turn them NaN
    while the loss that produced it was still finite, and the next loss check would come too late."""
    weights = [v for v in s.model.state_dict().values() if v.is_floating_point()]
    if not all(bool(torch.isfinite(v).all()) for v in weights):
        raise diverged(s, f"step {s.step}: the weights became non-finite")
    s.saved_step, s.saved_max_abs_weight = s.step, max(float(v.abs().max()) for v in weights if v.numel())
    save_checkpoint(path, {
        "model": s.model.state_dict(), **s.extra_state, "epoch": s.epoch, "step": s.step,
        "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(),
        "rng": _rng_state(), "best_ap": s.best_ap, "train": asdict(s.cfg)})


def diverged(s: Session, error: str) -> NonFiniteLoss:
    """The error to raise, after marking the run so that a resume does not repeat the same steps."""
    if s.info.main:
        write_json(s.out_dir / DIVERGED, {"error": error, "train": asdict(s.cfg)})
    last = s.out_dir / "last.pt"
    if not last.is_file():
        kept = "no checkpoint was saved"
    elif s.saved_step is None:
        kept = f"last.pt ({last}) is from before this session"
    else:
        kept = (f"last.pt ({last}) holds step {s.saved_step}, saved before it with finite weights "
                f"(largest |weight| {s.saved_max_abs_weight:.3g})")
    return NonFiniteLoss(f"{error}; training stopped: {kept}. Resuming would repeat the same steps: lower "
                         f"train.lr ({s.cfg.lr}) or set train.grad_clip ({s.cfg.grad_clip}), and train again")


def log(s: Session, record: dict[str, Any]) -> None:
    """One line of log.jsonl, with the wall time of this session and the threads it runs on (what a wall time
    means: the ablation reports both)."""
    record["elapsed_s"] = round(time.perf_counter() - s.started, 1)
    record["threads"] = torch.get_num_threads()
    with open(s.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def train_step(s: Session, model: nn.Module, loss_fn: LossFn, images: torch.Tensor, targets: list[dict[str, Any]],
               amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward, the loss terms (checked finite), backward, clipping, optimizer and LR step; (total, terms)."""
    with torch.autocast(s.info.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        losses = loss_fn(model, images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise diverged(s, f"step {s.step}: loss term '{name}' is {value.item()}")
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(total).backward()
    if s.cfg.grad_clip > 0:
        s.scaler.unscale_(s.optimizer)
        nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()
    s.step += 1
    return total, losses


def steps_in_epoch(epoch: int, steps_per_epoch: int, total_steps: int) -> int:
    """The steps epoch (0-based) will run: the whole epoch, or what max_steps leaves of it (the bar's total)."""
    return max(0, min(steps_per_epoch, total_steps - epoch * steps_per_epoch))


def _evaluate_split(s: Session, dataset: CocoDataset, split: str, input_size: tuple[int, int],
                    progress: bool) -> tuple[dict[str, Any], list[dict]]:
    metrics, results = evaluate_model(s.model, dataset, input_size, s.cfg.batch_size, s.info.device, progress)
    log(s, {"step": s.step, "epoch": s.epoch, f"{split}_images": len(dataset.images),
            split: {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}})
    print(f"epoch {-(-s.step // s.steps_per_epoch)}: {split} ({len(dataset.images)} images) "
          f"{format_metrics(metrics)}", flush=True)
    return metrics, results


def _keep_best(s: Session, ap: float) -> None:
    if ap > s.best_ap:
        s.best_ap = ap
        save(s, s.out_dir / "last.pt")  # records best_ap for a resume
        save(s, s.out_dir / "best.pt")


def evaluate(s: Session, val_set: CocoDataset, input_size: tuple[int, int], final: bool,
             progress: bool, monitor_set: CocoDataset | None = None) -> dict[str, Any]:
    """Val mAP (a subset during training, all of val at the end); best.pt follows the best AP of the split
    monitored during training. With a monitor split, every evaluation (the last one too) reads it, and the
    final one reads all of val besides, for metrics.json alone."""
    if monitor_set is not None:
        metrics, _ = _evaluate_split(s, subset(monitor_set, s.cfg.max_val_images), s.cfg.monitor, input_size,
                                     progress)
        _keep_best(s, metrics["AP"])
        if not final:
            return metrics
    metrics, results = _evaluate_split(s, val_set if final else subset(val_set, s.cfg.max_val_images), "val",
                                       input_size, progress)
    if monitor_set is None:
        _keep_best(s, metrics["AP"])
    if final:
        write_evaluation(str(s.out_dir), metrics, results)
    return metrics


def train(model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, train_set: CocoDataset, val_set: CocoDataset,
          out_dir: str | Path, input_size: tuple[int, int], extra_state: dict[str, Any],
          resume: bool = False, progress: bool = True, dist_info: DistInfo | None = None,
          monitor_set: CocoDataset | None = None) -> dict[str, Any]:
    """Train `model` with `loss_fn(model, images, targets) -> {'loss_*': weighted term, ...}`; return final metrics.

    extra_state (model config, classes) is stored in every checkpoint.
    """
    info = dist_info or setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    cuda = info.device.type == "cuda"
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = DetectionDataset(subset(train_set, cfg.max_train_images) if cfg.max_train_images else train_set,
                               input_size, cfg.augment, cfg.seed)
    sampler = DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // cfg.batch_size
    if steps_per_epoch == 0:
        raise InputError(f"train.batch_size: {cfg.batch_size} x {info.world} "
                         f"processes exceeds the {len(dataset)} training images")
    optimizer = build_optimizer(model, cfg)
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda and cfg.amp else None
    s = Session(model, cfg, Path(out_dir), info, steps_per_epoch, extra_state, optimizer,
                torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(cfg, k, steps_per_epoch)),
                torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16))
    resume_or_start(s, resume)
    total_steps = total_steps_for(cfg, steps_per_epoch)
    finished = {}
    if s.step >= total_steps:
        finished = metrics_file.measurement(metrics_file.read(s.out_dir / metrics_file.NAME))
    if finished:  # else (no final evaluation written, or unreadable) the final evaluation below runs again
        if info.main:
            print(f"already trained: {s.out_dir / 'last.pt'} is at step {s.step}")
        return finished
    train_model = DistributedDataParallel(model) if info.world > 1 else model
    if info.main:
        s.out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    train_model.train()
    while s.step < total_steps:
        epoch, skip = divmod(s.step, steps_per_epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        if hasattr(loss_fn, "set_epoch"):  # the distiller's until_epoch
            loss_fn.set_epoch(epoch)
        indices = list(sampler)[skip * cfg.batch_size : steps_per_epoch * cfg.batch_size]
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=indices, collate_fn=collate,
                            num_workers=cfg.workers, pin_memory=cuda, drop_last=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it", disable=not (info.main and progress),
                   initial=skip, total=steps_in_epoch(epoch, steps_per_epoch, total_steps))
        tick = time.perf_counter()
        for images, targets in bar:
            images = images.to(info.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = [{k: (v.to(info.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            total, losses = train_step(s, train_model, loss_fn, images, targets, amp_dtype)
            now = time.perf_counter()
            images_per_s, tick = cfg.batch_size * info.world / max(now - tick, 1e-9), now
            values = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            if info.main:
                bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in values.items()
                                 if k.startswith("loss_")}
                                | {"img/s": f"{images_per_s:.1f}"})
                if s.step % cfg.log_every == 0 or s.step == total_steps:
                    log(s, {"step": s.step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                            "loss": round(float(total.detach()), 5), **values, "img_s": round(images_per_s, 2)})
                if cfg.save_every_steps and s.step % cfg.save_every_steps == 0:
                    save(s, s.out_dir / "last.pt")
            if s.step >= total_steps:
                break
        bar.close()
        if info.main and (s.step % steps_per_epoch == 0 or s.step >= total_steps):
            save(s, s.out_dir / "last.pt")
            if s.step >= total_steps or (epoch + 1) % cfg.eval_every == 0:
                metrics = evaluate(s, val_set, input_size, final=s.step >= total_steps, progress=progress,
                                   monitor_set=monitor_set)
        if info.world > 1:
            dist.barrier()
    if info.main and not metrics:  # trained to the end before, but stopped ahead of the final evaluation
        metrics = evaluate(s, val_set, input_size, final=True, progress=progress, monitor_set=monitor_set)
    return metrics
