#!/usr/bin/env python3
"""Benchmark exported detectors on this device: latency (infer-only and end-to-end), throughput, and
with --data their COCO mAP through the same evaluator as training. Standalone on the device: needs
numpy, pillow, pycocotools and the runtime of each artifact (no torch).

    python deploy/benchmark.py model.onnx model_int8.xml model.engine --data instances_val.json \\
        --json bench.json --markdown bench.md

The runtime follows the suffix (.onnx ONNX Runtime, .xml OpenVINO, .engine/.plan TensorRT) unless
--backend says otherwise. On a Jetson, power is sampled from tegrastats during a timed run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):  # run as a script: make the `deploy` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from deploy.coco import image_dir_beside, load_coco  # noqa: E402
from deploy.errors import InputError  # noqa: E402
from deploy.files import write_json, write_text  # noqa: E402
from deploy.latency import time_calls  # noqa: E402
from deploy.measure import measure_artifact, sample_images  # noqa: E402
from deploy.runtimes import backend_for, open_runner  # noqa: E402
from deploy.tegrastats import parse_line, summarize  # noqa: E402

RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",),
                    "tensorrt": ("tensorrt", "pycuda")}


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return None


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover  (3.8 has it; kept for odd builds)
        return None
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What the figures were measured on: CPU, threads, Python and runtime versions; on a Jetson its
    model, L4T release, nvpmodel mode and whether jetson_clocks pinned the clocks."""
    cpu = platform.processor() or platform.machine()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_threads": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "runtimes": {p: _version(p) for ps in RUNTIME_PACKAGES.values() for p in ps if _version(p)}}
    model = _read("/proc/device-tree/model")
    if model and ("jetson" in model.lower() or os.path.exists("/etc/nv_tegra_release")):
        clocks = _run(["jetson_clocks", "--show"])
        info["jetson"] = {"model": model, "l4t": (_read("/etc/nv_tegra_release") or "").splitlines()[0:1],
                          "nvpmodel": _run(["nvpmodel", "-q"]), "jetson_clocks_show": clocks}
    return info


class TegrastatsSampler:
    """tegrastats in the background while a block runs; samples parsed as they arrive."""

    def __init__(self, interval_ms: int = 100):
        self.cmd = ["tegrastats", "--interval", str(interval_ms)]
        self.samples: list = []

    @staticmethod
    def available() -> bool:
        return shutil.which("tegrastats") is not None

    def __enter__(self) -> TegrastatsSampler:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            sample = parse_line(line)
            if sample:
                self.samples.append(sample)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.thread.join(timeout=5)


def measure_power(runner, batch: int, iters: int) -> dict:
    """Mean/peak watts and mJ per image over a timed infer-only run, sampled from tegrastats."""
    shape = [d if d > 0 else batch for d in runner.inputs[runner.input_name]]
    x = np.zeros(shape, dtype=np.float32)
    runs = max(iters, 50)
    with TegrastatsSampler() as sampler:
        start = time.perf_counter()
        time_calls(lambda: runner.infer(x), runs, warmup=0)
        seconds = time.perf_counter() - start
    return summarize(sampler.samples, runs * batch, seconds)


def runner_options(backend: str, args: argparse.Namespace) -> dict:
    if backend == "onnxruntime":
        return {"device": args.device or "cpu", "threads": args.threads}
    if backend == "openvino":
        return {"device": args.device or "CPU", "threads": args.threads, "hint": args.hint}
    return {"cuda_graph": args.cuda_graph}


def benchmark(path: str, args: argparse.Namespace, coco, images) -> dict:
    """One artifact's entry of the JSON."""
    backend = backend_for(path, args.backend)
    runner = open_runner(path, backend, **runner_options(backend, args))
    if runner.batch and args.batch and args.batch != runner.batch:
        raise InputError(f"{path}: its batch is fixed at {runner.batch}; --batch {args.batch} needs a dynamic-batch export")
    _, _, height, width = runner.inputs[runner.input_name]
    metrics, _ = measure_artifact(runner, coco, (height, width), args.warmup, args.iters, images, args.batch)
    entry = {k: metrics[k] for k in ("artifact", "backend", "precision", "batch", "latency_ms", "throughput_ips", "size_mb")}
    if coco is not None:
        entry.update(AP=metrics["AP"], AP50=metrics["AP50"], AP75=metrics["AP75"])
    if TegrastatsSampler.available():
        entry["power"] = measure_power(runner, entry["batch"], args.iters)
    return entry


def table(entries: list) -> str:
    """Markdown table of the entries."""
    lines = ["| artifact | backend | precision | batch | AP | AP50 | infer p50 ms | infer p99 ms | e2e p50 ms "
             "| e2e p99 ms | images/s | W | mJ/image |", "|---" * 13 + "|"]
    for e in entries:
        inf, e2e, power = e["latency_ms"]["infer"], e["latency_ms"]["end_to_end"], e.get("power", {})
        ap = f"{100 * e['AP']:.1f} | {100 * e['AP50']:.1f}" if "AP" in e else "- | -"
        lines.append(f"| {os.path.basename(e['artifact'])} | {e['backend']} | {e['precision']} | {e['batch']} | {ap} "
                     f"| {inf['p50']:.2f} | {inf['p99']:.2f} | {e2e['p50']:.2f} | {e2e['p99']:.2f} "
                     f"| {e['throughput_ips']:.1f} | {power.get('mean_w', '-')} | {power.get('energy_per_image_mj', '-')} |")
    return "\n".join(lines)


def parse_args(argv: list | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deploy/benchmark.py", description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".onnx, OpenVINO .xml or TensorRT .engine")
    parser.add_argument("--backend", choices=sorted(set(RUNTIME_PACKAGES)), help="override the runtime the suffix implies")
    parser.add_argument("--device", help="onnxruntime: cpu|cuda; openvino: CPU|GPU|NPU|AUTO")
    parser.add_argument("--batch", type=int, help="batch size for dynamic-batch artifacts (static ones keep theirs)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--threads", type=int, help="runtime threads (default: the runtime's)")
    parser.add_argument("--hint", default="LATENCY", help="OpenVINO performance hint")
    parser.add_argument("--cuda-graph", action="store_true", help="TensorRT: capture inference in a CUDA graph")
    parser.add_argument("--data", help="COCO annotations json; images in the folder the COCO layout puts them")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the table here")
    return parser.parse_args(argv)


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    try:
        coco = load_coco(args.data, image_dir_beside(args.data)) if args.data else None
        images = sample_images(coco, 8) if coco is not None else None
        entries = []
        for path in args.artifacts:
            entries.append(benchmark(path, args, coco, images))
            print(f"{path}: done", file=sys.stderr, flush=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = table(entries)
    print(text)
    result = {"machine": machine_info(), "results": entries,
              "settings": {"warmup": args.warmup, "iters": args.iters, "threads": args.threads, "data": args.data}}
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_text(args.markdown, f"# Benchmark\n\nMachine: {result['machine']['cpu']}, {result['machine']['cpu_threads']} "
                   f"threads. Latency in ms per batch, {args.iters} timed iterations after {args.warmup} warm-up.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
