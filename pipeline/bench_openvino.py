"""Our OpenVINO latency against OpenVINO's own benchmark_app on the same IR, measured back to back
(a benchmark, not a test). benchmark_app refuses -nthreads with a hint, so both use the runtime's
default threads and the LATENCY hint. The two alternate for --rounds rounds and each reports its
median round, so drift of a shared machine hits both alike.

    python -m pipeline.bench_openvino MODEL.xml [MODEL.xml ...] [--seconds 10] [--rounds 3] [--json runs/bench-openvino.json]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from deploy.errors import InputError
from deploy.files import write_json
from deploy.latency import latency_stats, time_calls
from deploy.runtimes import open_runner
from pipeline.cli import guarded


def benchmark_app(xml: str, seconds: int) -> dict[str, float]:
    """benchmark_app's median and average latency (ms) for an IR, LATENCY hint, CPU."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    proc = subprocess.run([exe, "-m", xml, "-d", "CPU", "-hint", "latency", "-t", str(seconds)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"benchmark_app failed on {xml}: {proc.stdout[-300:]}{proc.stderr[-300:]}")
    found = {k: float(re.search(rf"{k}:\s+([\d.]+) ms", proc.stdout).group(1)) for k in ("Median", "Average")}
    return {"p50": found["Median"], "mean": found["Average"]}


def ours(xml: str, seconds: int) -> dict[str, float]:
    """Our infer-only latency statistics for the same time budget."""
    runner = open_runner(xml, hint="LATENCY")
    x = np.zeros([d if d > 0 else 1 for d in runner.inputs[runner.input_name]], np.float32)
    probe = latency_stats(time_calls(lambda: runner.infer(x), 20, 10))
    iters = max(50, int(seconds * 1000 / probe["mean"]))
    return latency_stats(time_calls(lambda: runner.infer(x), iters, 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench_openvino", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--seconds", type=int, default=10, help="per round and tool")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="runs/bench-openvino.json")
    args = parser.parse_args(argv)

    def body() -> None:
        rows = []
        print("| IR | ours p50 ms | benchmark_app median ms | ratio | ours mean ms | benchmark_app mean ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for xml in args.models:
            rounds = [(ours(xml, args.seconds), benchmark_app(xml, args.seconds)) for _ in range(args.rounds)]
            mine = sorted((r[0] for r in rounds), key=lambda m: m["p50"])[len(rounds) // 2]
            theirs = sorted((r[1] for r in rounds), key=lambda m: m["p50"])[len(rounds) // 2]
            rows.append({"model": xml, "ours": mine, "benchmark_app": theirs, "p50_ratio": mine["p50"] / theirs["p50"],
                         "rounds": [{"ours_p50": a["p50"], "benchmark_app_p50": b["p50"]} for a, b in rounds]})
            print(f"| {xml} | {mine['p50']:.2f} | {theirs['p50']:.2f} | {mine['p50'] / theirs['p50']:.3f} "
                  f"| {mine['mean']:.2f} | {theirs['mean']:.2f} |", flush=True)
        write_json(args.json, {"rows": rows})

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
