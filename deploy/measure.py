"""Measure one artifact the same way on every runtime: COCO mAP through the deploy/ evaluator, latency
(infer-only and end-to-end), file size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deploy.coco import CocoDataset
from deploy.evaluate import coco_eval
from deploy.latency import latency_stats, time_calls
from deploy.predict import end_to_end, predict, runner_infer
from deploy.preprocess import load_image, preprocess

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def artifact_size_mb(path: str) -> float:
    """Size on disk in MB, an OpenVINO .xml counted with its .bin."""
    files = [path] + ([str(Path(path).with_suffix(".bin"))] if path.endswith(".xml") else [])
    return round(sum(os.path.getsize(f) for f in files if os.path.exists(f)) / 1e6, 3)


def sample_images(coco: CocoDataset, count: int) -> list[np.ndarray]:
    """The first `count` images of a dataset, decoded (end-to-end timing excludes file decoding)."""
    return [load_image(coco.image_path(info)) for info in coco.images[:count]]


def measure_latency(runner: Any, images: list[np.ndarray], input_size: tuple[int, int], warmup: int = 10,
                    iters: int = 100, batch: int | None = None) -> dict[str, dict[str, float]]:
    """{'infer': stats, 'end_to_end': stats} in ms per batch at the runner's batch size (or `batch` for
    a dynamic one); infer-only times the runtime call on one preprocessed batch, end-to-end adds
    preprocess and NMS."""
    batch = runner.batch or batch or 1
    chosen = [images[i % len(images)] for i in range(batch)]
    x = np.stack([preprocess(image, input_size)[0] for image in chosen])
    infer = runner_infer(runner)
    return {
        "infer": latency_stats(time_calls(lambda: runner.infer(x), iters, warmup), batch),
        "end_to_end": latency_stats(time_calls(end_to_end(infer, chosen, input_size), iters, warmup), batch),
    }


def measure_artifact(runner: Any, coco: CocoDataset | None, input_size: tuple[int, int], warmup: int = 10,
                     iters: int = 100, images: list[np.ndarray] | None = None,
                     batch: int | None = None) -> tuple[dict[str, Any], list]:
    """(metrics, COCO results) of an opened runner: mAP on coco (when given), latency, size. `batch`
    applies to a dynamic-batch artifact; a static one runs at its own."""
    batch = runner.batch or batch or 1
    metrics: dict[str, Any] = {"artifact": runner.path, "backend": runner.backend, "precision": runner.precision,
                               "executed_precision": runner.executed_precision, "execution": runner.execution,
                               "precision_warning": runner.precision_warning,
                               "batch": batch, "size_mb": artifact_size_mb(runner.path)}
    results: list = []
    if coco is not None:
        results = predict(runner_infer(runner), coco, input_size, batch_size=batch, fixed_batch=runner.batch)
        evaluation = coco_eval(coco, results)
        metrics.update({k: evaluation[k] for k in METRIC_KEYS}, num_images=evaluation["num_images"])
    if images is None:
        images = sample_images(coco, 8) if coco is not None else [np.full((*input_size, 3), 114, np.uint8)]
    metrics["latency_ms"] = measure_latency(runner, images, input_size, warmup, iters, batch)
    metrics["throughput_ips"] = metrics["latency_ms"]["infer"]["throughput_ips"]
    return metrics, results
