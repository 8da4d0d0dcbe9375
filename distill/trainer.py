"""One training loop for teacher training and (with a distillation loss) for students.

    python -m pipeline.train --config configs/pipelines/default.yaml --role teacher      # one process
    torchrun --standalone --nproc_per_node=2 -m pipeline.train --role teacher ...         # DDP (gloo/NCCL)

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
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from deploy.coco import CocoDataset
from deploy.errors import InputError
from deploy.evaluate import format_metrics, write_evaluation
from deploy.files import write_json, write_text
from distill.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from distill.data.dataset import DetectionDataset, collate
from distill.validate import evaluate_model, subset

LossFn = Callable[[nn.Module, torch.Tensor, list], dict[str, torch.Tensor]]


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 8  # per process
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01  # for batch_size x processes as given; not rescaled
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4
    warmup_steps: int = 500  # linear warm-up from warmup_ratio * lr
    warmup_ratio: float = 0.001
    schedule: Literal["step", "cosine"] = "step"
    decay_epochs: list[int] = field(default_factory=lambda: [8, 11])  # step schedule: x gamma at these epochs
    gamma: float = 0.1
    min_lr_ratio: float = 0.01  # cosine schedule ends at min_lr_ratio * lr
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    augment: list[str] = field(default_factory=lambda: ["hflip", "photometric"])  # see distill/data/dataset.py
    amp: bool = True  # mixed precision (CUDA only)
    channels_last: bool = True  # NHWC memory format (faster on CUDA and, with oneDNN, on CPU)
    eval_every: int = 1  # validate every N epochs (and after the last)
    max_val_images: int = 0  # validate during training on the first N val images (0 = all); final eval uses all
    log_every: int = 10  # steps between log.jsonl lines
    save_every_steps: int = 0  # extra mid-epoch checkpoints (0 = at epoch ends only)
    workers: int = 2  # data-loading processes per training process
    seed: int = 0
    max_steps: int = 0  # stop after this many steps in all (0 = run every epoch); smoke runs and tests
    max_train_images: int = 0  # train on the first N images (0 = all)
    device: str = "auto"  # auto | cpu | cuda | cuda:N


DIVERGED = "diverged.json"  # written beside last.pt when the loss or the weights turned non-finite


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or Inf; the message names the step and the term."""


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
    """After a resume, drop log lines past the checkpoint's step (they will be logged again)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        write_text(path, "".join(line + "\n" for line in keep))


def train(model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, train_set: CocoDataset, val_set: CocoDataset,
          out_dir: str | Path, input_size: tuple[int, int], extra_state: dict[str, Any],
          resume: bool = False, progress: bool = True, dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Train `model` with `loss_fn(model, images, targets) -> {'loss_*': weighted term, ...}`; return final metrics.

    extra_state (model config, classes) is stored in every checkpoint.
    """
    info = dist_info or setup_distributed(cfg.device)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    cuda = info.device.type == "cuda"
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.max_train_images:
        train_set = subset(train_set, cfg.max_train_images)
    dataset = DetectionDataset(train_set, input_size, cfg.augment, cfg.seed)
    sampler = DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // cfg.batch_size
    if steps_per_epoch == 0:
        raise InputError(f"train.batch_size: {cfg.batch_size} x {info.world} processes exceeds the {len(dataset)} training images")
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
    amp = cuda and cfg.amp
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    step, best_ap = 0, -1.0
    if not (resume and (out_dir / "last.pt").is_file()) and info.main:
        if resume:
            print(f"resume: no checkpoint at {out_dir / 'last.pt'}; starting from step 0")
        _truncate_log(out_dir / "log.jsonl", 0)  # a fresh start keeps no lines of an earlier run
        (out_dir / DIVERGED).unlink(missing_ok=True)
    if resume and (out_dir / "last.pt").is_file():
        if (out_dir / DIVERGED).is_file():  # the same seeded steps from the same checkpoint diverge again
            raise NonFiniteLoss(f"{out_dir / DIVERGED}: this run diverged before "
                                f"({json.loads((out_dir / DIVERGED).read_text()).get('error', '?')}); remove "
                                f"{out_dir} (or move it away) and train again with other settings")
        state = load_checkpoint(out_dir / "last.pt")
        load_model_state(model, state["model"], str(out_dir / "last.pt"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step, best_ap = state["step"], state.get("best_ap", -1.0)
        if info.main:
            print(f"resumed from {out_dir / 'last.pt'} at step {step} (epoch {step // steps_per_epoch})")
            _truncate_log(out_dir / "log.jsonl", step)
    total_steps = total_steps_for(cfg, steps_per_epoch)
    if step >= total_steps and (out_dir / "metrics.json").is_file():
        if info.main:
            print(f"already trained: {out_dir / 'last.pt'} is at step {step}")
        return json.loads((out_dir / "metrics.json").read_text())
    train_model = DistributedDataParallel(model) if info.world > 1 else model

    saved = {"step": step, "max_abs_weight": None}  # what last.pt holds, for the message if the loss diverges

    def checkpoint(path: Path) -> None:
        # Never over a good file with non-finite weights: an optimizer step can turn them NaN while the
        # loss that produced it was still finite, and the next loss check would come too late.
        weights = [v for v in model.state_dict().values() if v.is_floating_point()]
        if not all(bool(torch.isfinite(v).all()) for v in weights):
            raise diverged(f"step {step}: the weights became non-finite")
        saved.update(step=step, max_abs_weight=max(float(v.abs().max()) for v in weights if v.numel()))
        save_checkpoint(path, {
            "model": model.state_dict(), **extra_state, "epoch": step // steps_per_epoch, "step": step,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": _rng_state(), "best_ap": best_ap, "train": asdict(cfg)})

    def diverged(error: str) -> NonFiniteLoss:
        """The error to raise, after marking the run so that a resume does not repeat the same steps."""
        if info.main:
            write_json(out_dir / DIVERGED, {"error": error, "train": asdict(cfg)})
        last = out_dir / "last.pt"
        kept = (f"last.pt ({last}) holds step {saved['step']}, saved before it with finite weights "
                f"(largest |weight| {saved['max_abs_weight']:.3g})" if last.is_file() and saved["max_abs_weight"] is not None
                else f"last.pt ({last}) is from before this session" if last.is_file() else "no checkpoint was saved")
        return NonFiniteLoss(f"{error}; training stopped: {kept}. Resuming would repeat the same steps: lower "
                             f"train.lr ({cfg.lr}) or set train.grad_clip ({cfg.grad_clip}), and train again")

    started = time.perf_counter()

    def log(record: dict[str, Any]) -> None:
        record["elapsed_s"] = round(time.perf_counter() - started, 1)  # wall time of this session
        with open(out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate(final: bool) -> dict[str, Any]:
        """Val mAP (a subset during training, all of val at the end); best.pt follows the best AP."""
        nonlocal best_ap
        val = val_set if final else subset(val_set, cfg.max_val_images)
        metrics, results = evaluate_model(model, val, input_size, cfg.batch_size, info.device, progress)
        log({"step": step, "epoch": step // steps_per_epoch, "val_images": len(val.images),
             "val": {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}})
        print(f"epoch {-(-step // steps_per_epoch)}: val ({len(val.images)} images) {format_metrics(metrics)}", flush=True)
        if metrics["AP"] > best_ap:
            best_ap = metrics["AP"]
            checkpoint(out_dir / "last.pt")  # records best_ap for a resume
            checkpoint(out_dir / "best.pt")
        if final:
            write_evaluation(str(out_dir), metrics, results)
        return metrics

    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    train_model.train()
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        indices = list(sampler)[skip * cfg.batch_size : steps_per_epoch * cfg.batch_size]
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=indices, collate_fn=collate,
                            num_workers=cfg.workers, pin_memory=cuda, drop_last=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it", disable=not (info.main and progress),
                   initial=skip, total=steps_per_epoch)
        tick = time.perf_counter()
        for images, targets in bar:
            images = images.to(info.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = [{k: (v.to(info.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp):
                losses = loss_fn(train_model, images, targets)
            total = sum(v for k, v in losses.items() if k.startswith("loss_"))
            for name, value in losses.items():
                if not torch.isfinite(value).all():
                    raise diverged(f"step {step}: loss term '{name}' is {value.item()}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            now = time.perf_counter()
            images_per_s = cfg.batch_size * info.world / max(now - tick, 1e-9)
            tick = now
            values = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            if info.main:
                bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in values.items() if k.startswith("loss_")}
                                | {"img/s": f"{images_per_s:.1f}"})
                if step % cfg.log_every == 0 or step == total_steps:
                    log({"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "loss": round(float(total.detach()), 5),
                         **values, "img_s": round(images_per_s, 2)})
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    checkpoint(out_dir / "last.pt")
            if step >= total_steps:
                break
        bar.close()
        epoch_done = step % steps_per_epoch == 0
        if info.main and (epoch_done or step >= total_steps):
            checkpoint(out_dir / "last.pt")
            if step >= total_steps or (epoch + 1) % cfg.eval_every == 0:
                metrics = evaluate(final=step >= total_steps)
        if info.world > 1:
            dist.barrier()
    if info.main and not metrics:  # trained to the end before, but stopped ahead of the final evaluation
        metrics = evaluate(final=True)
    return metrics
