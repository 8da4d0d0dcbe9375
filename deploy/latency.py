"""Latency statistics: warm-up, then timed iterations; infer-only and end-to-end are timed apart."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 10,
               timer: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds per call of fn over `iters` timed calls, after `warmup` untimed ones."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be at least 1 and warmup at least 0, got {iters} and {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = timer()
        fn()
        samples.append((timer() - start) * 1000.0)
    return samples


def latency_stats(samples_ms: list[float], batch: int = 1) -> dict[str, float]:
    """mean, std, min, p50, p90, p99 (ms per batch) and throughput (images per second)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples")
    stats = {
        "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
        # 'linear' interpolation: numpy's default, the same definition benchmark_app and trtexec use for medians
        "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)), "p99": float(np.percentile(x, 99)),
    }
    stats["throughput_ips"] = batch * 1000.0 / stats["mean"]
    return {k: round(v, 4) for k, v in stats.items()}
