"""Facts about a trained PyTorch detector for the report: parameters, GFLOPs and its FP32 latency through
the same deploy/ timing code as every exported artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deploy.coco import CocoDataset
from deploy.files import write_json
from deploy.measure import measure_latency, sample_images
from distill.models.detector import load_detector
from export.torch_runner import TorchRunner
from pipeline.config import PipelineConfig
from pipeline.stages.data import load_split


def count_gflops(model: nn.Module, input_size: tuple[int, int]) -> float:
    """Forward FLOPs at batch 1 in GFLOPs (a multiply-add counts 2, as torch's flop counter does)."""
    x = torch.zeros(1, 3, *input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return round(counter.get_total_flops() / 1e9, 3)


def profile_checkpoint(path: Path, val: CocoDataset, warmup: int, iters: int, threads: int = 0) -> dict[str, Any]:
    """{params, gflops, input_size, size_mb, latency_ms{infer, end_to_end}} of a detector checkpoint."""
    detector, _, _ = load_detector(path)
    return profile_model(detector, str(path), val, warmup, iters, threads)


def profile_model(detector: nn.Module, name: str, val: CocoDataset, warmup: int, iters: int,
                  threads: int = 0) -> dict[str, Any]:
    """profile_checkpoint's figures for a detector already built (a teacher from mmdetection or torchvision)."""
    input_size = tuple(detector.cfg.input_size)
    runner = TorchRunner(detector, name, 1, threads)
    return {
        "artifact": name, "backend": "pytorch", "precision": "fp32", "input_size": list(input_size),
        "params": sum(p.numel() for p in detector.parameters()),
        "gflops": count_gflops(detector, input_size),
        # The weights alone: the checkpoint file also holds the optimizer state for a resume.
        "size_mb": round(sum(t.numel() * t.element_size() for t in detector.state_dict().values()) / 1e6, 3),
        "latency_ms": measure_latency(runner, sample_images(val, 8), input_size, warmup, iters),
    }


def write_profile(cfg: PipelineConfig, checkpoint: Path, out: Path) -> None:
    """Params, GFLOPs and PyTorch latency of a trained model, for the report: <out>/profile.json."""
    bc = cfg.benchmark
    write_json(out / "profile.json",
               profile_checkpoint(checkpoint, load_split(cfg.data, "val"), bc.warmup, bc.iters, bc.threads))
