"""Our OpenVINO latency against OpenVINO's own benchmark_app on the same IR, measured back to back
(a benchmark, not a test). benchmark_app refuses -nthreads with a hint, so both use the runtime's
default threads and the LATENCY hint. The two alternate for --rounds rounds and each reports its
median round, so drift of a shared machine hits both alike.

    python -m pipeline.tools.bench_openvino MODEL.xml [MODEL.xml@bf16 ...] [--seconds 10] [--rounds 3] \\
        [--json runs/bench-openvino.json]

Every IR compiles with an explicit inference precision: f32 unless the argument says @bf16 or @f16.

--layers instead answers where the time goes: OpenVINO's own per-layer counters (PERF_COUNT),
averaged over --iters calls and grouped by layer kind, one column per IR, each column's speed-up
against the first IR's. On a CPU without VNNI that shows how far int8 kernels can go at all.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deploy.benchmark import join_artifact, split_artifact
from deploy.errors import InputError
from deploy.files import write_json
from deploy.latency import latency_stats, time_calls
from deploy.machine import machine_info, machine_line
from deploy.runtimes import open_runner
from deploy.runtimes.openvino import check_inference_precision
from deploy.tables import markdown_table
from pipeline.cli import guarded


def split_spec(spec: str) -> tuple[str, str]:
    """'model_fp32.xml@bf16' -> (path, 'bf16'); a plain path runs in f32, as the pipeline's runner does."""
    path, precision = split_artifact(spec)
    return path, check_inference_precision(precision, spec) or "f32"


def benchmark_app(spec: str, seconds: int) -> dict[str, float]:
    """benchmark_app's median and average latency (ms) for an IR, LATENCY hint, CPU, the same inference precision."""
    xml, precision = split_spec(spec)
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    proc = subprocess.run([exe, "-m", xml, "-d", "CPU", "-hint", "latency", "-infer_precision", precision,
                           "-t", str(seconds)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"benchmark_app failed on {xml}: {proc.stdout[-300:]}{proc.stderr[-300:]}")
    found = {k: float(re.search(rf"{k}:\s+([\d.]+) ms", proc.stdout).group(1)) for k in ("Median", "Average")}
    return {"p50": found["Median"], "mean": found["Average"]}


def ours(spec: str, seconds: int) -> dict[str, float]:
    """Our infer-only latency statistics for the same time budget."""
    xml, precision = split_spec(spec)
    runner = open_runner(xml, hint="LATENCY", inference_precision=precision)
    x = np.zeros([d if d > 0 else 1 for d in runner.inputs[runner.input_name]],
                 np.uint8 if getattr(runner, "input_uint8", False) else np.float32)
    probe = latency_stats(time_calls(lambda: runner.infer(x), 20, 10))
    iters = max(50, int(seconds * 1000 / probe["mean"]))
    return latency_stats(time_calls(lambda: runner.infer(x), iters, 10))


def layer_group(node_type: str, exec_type: str) -> str:
    """A layer kind comparable across precisions: the node type, with 1x1, kxk and grouped (depthwise)
    convolutions apart, whatever kernel ran them."""
    if node_type == "GroupConvolution" or "_dw_" in f"_{exec_type}_":  # recent releases call both Convolution
        return "group/depthwise conv"
    if node_type == "Convolution":
        return "1x1 conv" if "1x1" in exec_type else "kxk conv"
    return node_type


def layer_times(spec: str, iters: int, threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Mean ms per call of each layer kind (OpenVINO counts only the last call, so sum over calls), the
    precisions its kernels ran in and the kernels themselves (e.g. brgconv_avx512_amx_1x1_I8)."""
    import openvino as ov

    xml, precision = split_spec(spec)
    if not Path(xml).is_file():
        raise InputError(f"{xml}: no such IR (run the quantize stage first, or pick RUN=)")
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True, "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(xml), "CPU", config)
    request = compiled.create_infer_request()
    # a dynamic batch runs at 1, as ours() does
    x = np.zeros([d.get_length() if d.is_static else 1 for d in compiled.inputs[0].get_partial_shape()], np.float32)
    for _ in range(10):
        request.infer({0: x})
    ms: collections.Counter[str] = collections.Counter()
    precisions: dict[str, set[str]] = collections.defaultdict(set)
    kernels: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for _ in range(iters):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.status == ov.ProfilingInfo.Status.EXECUTED:
                group = layer_group(info.node_type, info.exec_type)
                ms[group] += info.real_time.total_seconds() * 1e3 / iters
                precisions[group].add(info.exec_type.rsplit("_", 1)[-1].lower())
                kernels[group][info.exec_type] += 1
    return {g: {"ms": ms[g], "precisions": sorted(precisions[g]),
                "kernels": {k: n // iters for k, n in kernels[g].most_common()}} for g in ms}


def layers_table(models: list[str], iters: int, threads: int | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table: per layer kind, ms per call for each IR and its speed-up against the first."""
    times = [layer_times(xml, iters, threads) for xml in models]

    def ms(t: dict[str, dict[str, Any]], group: str) -> float | None:
        return sum(r["ms"] for r in t.values()) if group == "total" else t.get(group, {}).get("ms")

    groups = sorted(set().union(*times), key=lambda g: -max(ms(t, g) or 0 for t in times))
    names = [join_artifact(Path(path).stem, precision) for path, precision in map(split_spec, models)]
    rows = []
    for g in [*groups, "total"]:
        cells = [f"{ms(t, g):.2f}" + (f" ({'/'.join(t[g]['precisions'])})" if g in t else "") if g in t or g == "total"
                 else "" for t in times]
        ref = ms(times[0], g)
        cells += [f"{ref / v:.2f}x" if ref and (v := ms(t, g)) else "" for t in times[1:]]
        rows.append([f"**{g}**" if g == "total" else g, *cells])
    text = markdown_table(["layer kind", *(f"{n} ms (kernels)" for n in names), *(f"{n} speed-up" for n in names[1:])],
                          rows)
    return text, [{"model": m, "layers": t} for m, t in zip(models, times)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd bench-openvino", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--seconds", type=int, default=10, help="per round and tool")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="runs/bench-openvino.json")
    parser.add_argument("--layers", action="store_true", help="per-layer-kind time instead (PERF_COUNT)")
    parser.add_argument("--iters", type=int, default=200, help="calls averaged with --layers")
    parser.add_argument("--threads", type=int, help="--layers: INFERENCE_NUM_THREADS (default: the runtime's)")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        if args.layers:
            text, rows = layers_table(args.models, args.iters, args.threads)
            machine = machine_info()
            print(f"{machine_line(machine)}\n")
            print(text)
            kernels = {f"{Path(r['model']).name}: {g}": ", ".join(f"{k} x{n}" for k, n in v["kernels"].items())
                       for r in rows for g, v in r["layers"].items() if g.endswith("conv")}
            print("\nconvolution kernels:\n" + "\n".join(f"- {k}: {v}" for k, v in kernels.items()))
            write_json(args.json, {"layers": rows, "iters": args.iters, "threads": args.threads, "machine": machine})
            return
        rows, cells = [], []
        for xml in args.models:
            rounds = [(ours(xml, args.seconds), benchmark_app(xml, args.seconds)) for _ in range(args.rounds)]
            mine = sorted((r[0] for r in rounds), key=lambda m: m["p50"])[len(rounds) // 2]
            theirs = sorted((r[1] for r in rounds), key=lambda m: m["p50"])[len(rounds) // 2]
            rows.append({"model": xml, "ours": mine, "benchmark_app": theirs, "p50_ratio": mine["p50"] / theirs["p50"],
                         "rounds": [{"ours_p50": a["p50"], "benchmark_app_p50": b["p50"]} for a, b in rounds]})
            cells.append([xml, f"{mine['p50']:.2f}", f"{theirs['p50']:.2f}", f"{mine['p50'] / theirs['p50']:.3f}",
                          f"{mine['mean']:.2f}", f"{theirs['mean']:.2f}"])
            print(f"{xml}: done", file=sys.stderr, flush=True)
        print(markdown_table(["IR", "ours p50 ms", "benchmark_app median ms", "ratio", "ours mean ms",
                              "benchmark_app mean ms"],
                             cells, numbers_right=True))
        write_json(args.json, {"rows": rows})

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
