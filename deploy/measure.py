"""Measure one artifact the same way on every runtime: COCO mAP through the deploy/ evaluator, latency
(infer-only and end-to-end), file size."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.coco import CocoDataset, decode_image_files
from deploy.errors import InputError
from deploy.evaluate import coco_eval
from deploy.latency import latency_stats, time_calls
from deploy.predict import end_to_end, image_detections, predict, runner_infer
from deploy.preprocess import load_image, model_input

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def artifact_size_mb(path: str) -> float:
    """Size on disk in MB, an OpenVINO .xml counted with its .bin."""
    files = [path] + ([str(Path(path).with_suffix(".bin"))] if path.endswith(".xml") else [])
    return round(sum(os.path.getsize(f) for f in files if os.path.exists(f)) / 1e6, 3)


def sample_images(coco: CocoDataset, count: int) -> list[np.ndarray]:
    """The first `count` images of a dataset, decoded (end-to-end timing excludes file decoding); a file
    that does not decode is one InputError naming it."""
    return [decoded(coco.image_path(info)) for info in coco.images[:count]]


def decoded(path: str) -> np.ndarray:
    try:
        return load_image(path)
    except Exception as e:  # PIL raises many types for a bad file (a cut JPEG passes the header check)
        raise InputError(f"{path}: cannot be decoded as an image ({type(e).__name__}: {e})") from e


def measure_latency(runner: Any, images: list[np.ndarray], input_size: tuple[int, int], warmup: int = 10,
                    iters: int = 100, batch: int | None = None) -> dict[str, dict[str, float]]:
    """{'infer', 'end_to_end', 'preprocess', 'postprocess': stats} in ms per batch at the runner's batch
    size (or `batch` for a dynamic one). infer-only times the runtime call on preprocessed batches;
    end-to-end adds preprocess and NMS; preprocess (letterbox, normalise) and postprocess (score
    threshold, top-k, NMS, rescale) are also timed alone, on the same images and the model's own outputs,
    so the split says where end-to-end time goes. Successive calls take the images' batches in turn:
    NMS time follows each image's candidate count, so one image would not stand for the others."""
    batch = runner.batch or batch or 1
    uint8 = getattr(runner, "input_uint8", False)
    groups = [[images[(g * batch + i) % len(images)] for i in range(batch)]
              for g in range(max(1, len(images) // batch))]
    prepared = [[model_input(image, input_size, uint8) for image in group] for group in groups]
    inputs = [np.stack([p[0] for p in group]) for group in prepared]
    infer = runner_infer(runner)
    outputs = [infer(x) for x in inputs]

    def postprocess(g: int) -> None:
        for k, (_, lb) in enumerate(prepared[g]):
            image_detections(outputs[g], k, lb)

    calls = {
        "infer": [lambda x=x: runner.infer(x) for x in inputs],
        "end_to_end": [end_to_end(infer, group, input_size, uint8) for group in groups],
        "preprocess": [lambda group=group: [model_input(im, input_size, uint8) for im in group] for group in groups],
        "postprocess": [lambda g=g: postprocess(g) for g in range(len(groups))],
    }
    return {name: latency_stats(time_calls(in_turn(fns), iters, warmup), batch) for name, fns in calls.items()}


def in_turn(fns: list[Callable[[], Any]]) -> Callable[[], Any]:
    """One call that runs fns[0], fns[1], ... on successive calls, round and round."""
    cycle = itertools.cycle(fns)
    return lambda: next(cycle)()


def e2e_over_infer(latency: dict[str, dict[str, float]]) -> float:
    """End-to-end p50 over infer-only p50: 1.0 when preprocessing and NMS cost nothing."""
    return round(latency["end_to_end"]["p50"] / latency["infer"]["p50"], 3)


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
        try:
            results = predict(runner_infer(runner), coco, input_size, batch_size=batch, fixed_batch=runner.batch,
                              uint8=getattr(runner, "input_uint8", False))
        except Exception:
            # a file that does not decode is the likely cause: name it in one line (a cost only on failure)
            decode_image_files(coco)
            raise
        evaluation = coco_eval(coco, results)
        metrics.update({k: evaluation[k] for k in METRIC_KEYS}, num_images=evaluation["num_images"])
    if images is None:
        images = sample_images(coco, 8) if coco is not None else [np.full((*input_size, 3), 114, np.uint8)]
    metrics["latency_ms"] = measure_latency(runner, images, input_size, warmup, iters, batch)
    metrics["throughput_ips"] = metrics["latency_ms"]["infer"]["throughput_ips"]
    metrics["e2e_over_infer"] = e2e_over_infer(metrics["latency_ms"])
    return metrics, results
