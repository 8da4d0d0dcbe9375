"""The report's plots (matplotlib, PNG): AP against latency with the Pareto front, AP per stage, and the
training curves of teacher and students."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from deploy.files import atomic_path, read_jsonl  # noqa: E402


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, AP) points that no other point beats: none is at least as fast and at
    least as accurate while strictly better in one of the two. Ordered by latency."""
    front = []
    for i, (lat, ap) in enumerate(points):
        dominated = any(lat2 <= lat and ap2 >= ap and (lat2 < lat or ap2 > ap)
                        for j, (lat2, ap2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_ap_latency(rows: list[dict[str, Any]], path: Path) -> Path:
    """AP (%) against infer-only p50 latency for every row that has one; the Pareto front joined."""
    rows = [r for r in rows if r.get("latency_ms")]
    points = [(r["latency_ms"]["p50"], 100 * r["AP"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    # Artifacts of one student cluster within a few ms and tenths of AP: labels beside the points would
    # overlap, so each artifact gets its own colour and marker (by runtime) and a legend outside the axes.
    markers = {"pytorch": "o", "onnxruntime": "s", "openvino": "D", "tensorrt": "^"}
    for i, ((lat, ap), row) in enumerate(zip(points, rows)):
        label = f"{row['name']} ({row.get('executed_precision') or row.get('precision', '')})"
        ax.scatter(lat, ap, s=48, zorder=3, color=f"C{i % 10}", marker=markers.get(row.get("runtime"), "o"),
                   edgecolors="black", linewidths=0.4, label=label)
    front = pareto_front(points)
    if front:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="grey", zorder=2,
                label="Pareto front")
        ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=130, facecolors="none",
                   edgecolors="black", zorder=4)
    if points:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    ax.set_xscale("log")  # PyTorch and INT8 engines lie an order of magnitude apart
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
    ax.set_xlabel("latency, infer-only p50 (ms, batch 1, log scale)")
    ax.set_ylabel("AP (%)")
    ax.set_title("Accuracy against latency, every artifact")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_ap_bars(rows: list[dict[str, Any]], path: Path) -> Path:
    """One bar per row: AP (%), with the teacher's as a line."""
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4))
    names, aps = [r["name"] for r in rows], [100 * r["AP"] for r in rows]
    bars = ax.bar(range(len(rows)), aps, color=[f"C{i % 10}" for i in range(len(rows))])
    for bar, ap in zip(bars, aps):
        ax.annotate(f"{ap:.1f}", (bar.get_x() + bar.get_width() / 2, ap), ha="center", va="bottom", fontsize=8)
    teacher = next((r for r in rows if r["stage"] == "teacher"), None)
    if teacher:
        ax.axhline(100 * teacher["AP"], color="black", linestyle=":", label="teacher")
        # above the axes, where no bar can be: inside, 'lower right' covered the last bar
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP after every stage")
    return _save(fig, path)


def read_log(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """([(step, loss)], [(step, val AP %)]) from a trainer's log.jsonl."""
    losses, aps = [], []
    for record in read_jsonl(path):
        if "val" in record:
            aps.append((record["step"], 100 * record["val"]["AP"]))
        elif "loss" in record:
            losses.append((record["step"], record["loss"]))
    return losses, aps


def plot_training(logs: dict[str, Path], path: Path) -> Path | None:
    """Total loss and validation AP against step for each training stage that left a log."""
    logs = {name: p for name, p in logs.items() if p.is_file()}
    if not logs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, log) in enumerate(logs.items()):
        losses, aps = read_log(log)
        if losses:
            left.plot(*zip(*losses), color=f"C{i}", label=name)
        if aps:
            right.plot(*zip(*aps), "o-", color=f"C{i}", label=name)
    left.set(xlabel="step", ylabel="training loss (all terms)", title="Training loss")
    right.set(xlabel="step", ylabel="val AP (%)", title="Validation AP (subset during training, all at the end)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)
