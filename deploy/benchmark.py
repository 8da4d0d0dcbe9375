#!/usr/bin/env python3
"""Benchmark exported detectors on this device: latency (infer-only and end-to-end), throughput, and
with --data their COCO mAP through the same evaluator as training. Standalone on the device: needs
numpy, pillow, pycocotools and the runtime of each artifact (no torch).

    python deploy/benchmark.py model.onnx model_int8.xml model.engine --data instances_val.json \\
        --names fp32,int8,trt --json bench.json --markdown bench.md

The runtime follows the suffix (.onnx ONNX Runtime, .xml OpenVINO, .engine/.plan TensorRT) unless
--backend says otherwise. Latency is timed on the first images of --data, taken in turn (--latency-only:
without evaluating AP on all of them); without --data, on one synthetic grey image, which times the
model alone (the table says so). On a Jetson, power is sampled from tegrastats during a timed run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):  # run as a script: make the `deploy` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import deploy.preprocess as preprocess_module  # noqa: E402
from deploy.coco import image_dir_beside, load_coco  # noqa: E402
from deploy.errors import DeviceError, InputError, report  # noqa: E402
from deploy.files import write_json, write_text  # noqa: E402
from deploy.latency import time_calls  # noqa: E402
from deploy.machine import RUNTIME_PACKAGES, machine_info, machine_line  # noqa: E402
from deploy.measure import measure_artifact, sample_images  # noqa: E402
from deploy.runtimes import backend_for, check_artifact_file, check_detector, input_size, open_runner  # noqa: E402
from deploy.tables import markdown_table  # noqa: E402
from deploy.tegrastats import parse_line, summarize  # noqa: E402


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
    x = np.zeros(shape, dtype=np.uint8 if getattr(runner, "input_uint8", False) else np.float32)
    runs = max(iters, 50)
    with TegrastatsSampler() as sampler:
        start = time.perf_counter()
        time_calls(lambda: runner.infer(x), runs, warmup=0)
        seconds = time.perf_counter() - start
    return summarize(sampler.samples, runs * batch, seconds)


def split_artifact(spec: str) -> tuple[str, str | None]:
    """'model_fp32.xml@bf16' -> ('model_fp32.xml', 'bf16'): one IR compiled with another inference
    precision (OpenVINO); a plain path has none."""
    path, sep, precision = spec.rpartition("@")
    return (path, precision) if sep and path and not os.path.exists(spec) else (spec, None)


def join_artifact(path, inference_precision: str | None) -> str:
    """The inverse of split_artifact: the path, with @precision for an IR compiled otherwise than f32 (the default)."""
    return f"{path}@{inference_precision}" if inference_precision not in (None, "f32") else str(path)


def runner_options(backend: str, args: argparse.Namespace, threads: int | None, precision: str | None) -> dict:
    if precision and backend != "openvino":
        raise InputError(f"@{precision}: an inference precision applies to OpenVINO IRs only, not to {backend}")
    if backend == "onnxruntime":
        return {"device": args.device or "cpu", "threads": threads}
    if backend == "openvino":
        return {"device": args.device or "CPU", "threads": threads, "hint": args.hint, "inference_precision": precision}
    return {"cuda_graph": args.cuda_graph}


SYNTHETIC_NOTE = ("Timed on one synthetic grey image already at the input size (no --data): the infer figures "
                  "hold, but pre, post and e2e mean nothing (no resize, no candidates for NMS); pass --data to time "
                  "real images.")


def benchmark(spec: str, name: str, args: argparse.Namespace, coco, images, threads: int | None = None) -> dict:
    """One artifact's entry of the JSON, at one thread setting. AP when coco is given; latency on `images`
    (None: one synthetic image)."""
    path, precision = split_artifact(spec)
    backend = backend_for(path, args.backend)
    runner = open_runner(path, backend, **runner_options(backend, args, threads, precision))
    check_detector(runner)
    if runner.batch and args.batch and args.batch != runner.batch:
        raise InputError(f"{path}: its batch is fixed at {runner.batch}; "
                         f"--batch {args.batch} needs a dynamic-batch export")
    if coco is not None:
        check_classes(runner, coco)
    height, width = input_size(runner)
    metrics, _ = measure_artifact(runner, coco, (height, width), args.warmup, args.iters, images, args.batch)
    entry = {"name": name}
    entry.update({k: metrics[k] for k in ("artifact", "backend", "precision", "batch", "latency_ms", "throughput_ips",
                                          "size_mb", "e2e_over_infer")})
    entry.update(inference_precision=precision, executed_precision=runner.executed_precision,
                 execution=runner.execution, threads=runner.threads, threads_setting=threads or "default")
    if runner.precision_warning:
        entry["precision_warning"] = runner.precision_warning
    if coco is not None:
        entry.update(AP=metrics["AP"], AP50=metrics["AP50"], AP75=metrics["AP75"])
    if TegrastatsSampler.available():
        entry["power"] = measure_power(runner, entry["batch"], args.iters)
    return entry


def check_classes(runner, coco) -> None:
    """AP maps the model's class k to the dataset's k-th category: refuse a dataset with another count (a
    model with NMS in its graph does not show its count; its labels are mapped as they come)."""
    classes = runner.outputs.get("scores", [0])[-1]
    if classes > 0 and classes != len(coco.categories):
        raise InputError(f"{coco.annotations_path}: {len(coco.categories)} categories, but {runner.path} scores "
                         f"{classes} classes: AP needs the dataset the model was trained on (--latency-only times "
                         "on any images)")


def table(entries: list) -> str:
    """Markdown table of the entries."""
    header = ["name", "backend", "precision", "executed", "threads", "batch", "AP", "AP50", "infer p50 ms",
              "infer p99 ms", "e2e p50 ms", "e2e p99 ms", "pre p50 ms", "post p50 ms", "e2e/infer", "images/s", "W",
              "mJ/image"]
    rows = []
    for e in entries:
        inf, e2e, power = e["latency_ms"]["infer"], e["latency_ms"]["end_to_end"], e.get("power", {})
        ap = [f"{100 * e['AP']:.1f}", f"{100 * e['AP50']:.1f}"] if "AP" in e else ["-", "-"]
        executed = e.get("executed_precision", "-") + (" (!)" if e.get("precision_warning") else "")
        rows.append([e["name"], e["backend"], e["precision"], executed, e.get("threads") or "-", e["batch"], *ap,
                     f"{inf['p50']:.2f}", f"{inf['p99']:.2f}", f"{e2e['p50']:.2f}", f"{e2e['p99']:.2f}",
                     f"{e['latency_ms']['preprocess']['p50']:.2f}", f"{e['latency_ms']['postprocess']['p50']:.2f}",
                     f"{e['e2e_over_infer']:.2f}", f"{e['throughput_ips']:.1f}", power.get("mean_w", "-"),
                     power.get("energy_per_image_mj", "-")])
    return markdown_table(header, rows)


def spread(values: list) -> dict:
    """median (of an even count: the mean of the middle two), min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rounds_summary(entries: list) -> tuple[str, list]:
    """With several rounds: per (name, threads), the median, min and max over rounds of the infer and
    end-to-end p50, and the infer speed-up against the first artifact at the same thread count (each round
    side by side)."""
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["name"], e.get("threads")), []).append(e)
    rows = []
    for (name, threads), group in groups.items():
        infer = [g["latency_ms"]["infer"]["p50"] for g in group]
        e2e = [g["latency_ms"]["end_to_end"]["p50"] for g in group]
        first = next((g for g in group if "AP" in g), group[0])
        row = {"name": name, "artifact": first["artifact"], "inference_precision": first.get("inference_precision"),
               "threads": threads, "precision": first["precision"],
               "executed_precision": first.get("executed_precision"), "AP": first.get("AP"), "rounds": len(group),
               "infer_p50_ms": infer, "e2e_p50_ms": e2e}
        row.update({f"infer_p50_{k}": v for k, v in spread(infer).items()})
        row.update({f"e2e_p50_{k}": v for k, v in spread(e2e).items()})
        rows.append(row)
    base = {r["threads"]: r["infer_p50_median"] for r in reversed(rows)}  # the first artifact's, per thread count
    lines = []
    for r in rows:
        r["speedup_vs_first"] = base[r["threads"]] / r["infer_p50_median"]
        ap = f"{100 * r['AP']:.2f}" if r["AP"] is not None else "-"
        lines.append([r["name"], r["precision"], r["executed_precision"], r["threads"], ap,
                      f"{r['infer_p50_median']:.2f}", f"{r['infer_p50_min']:.2f}", f"{r['infer_p50_max']:.2f}",
                      " / ".join(f"{v:.2f}" for v in r["infer_p50_ms"]), f"{r['e2e_p50_median']:.2f}",
                      f"{r['e2e_p50_min']:.2f}", f"{r['e2e_p50_max']:.2f}", f"{r['speedup_vs_first']:.2f}x"])
    header = ["name", "precision", "executed", "threads", "AP", "infer p50 ms (median)", "min", "max",
              "infer p50 per round", "e2e p50 ms (median)", "min", "max", "speed-up vs first"]
    return markdown_table(header, lines), rows


def thread_settings(text: str | None) -> list[int | None]:
    """--threads '1,2' -> [1, 2]; None -> [None] (the runtime's default)."""
    if not text:
        return [None]
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise InputError(f"--threads {text}: expected a number or a comma-separated list (1,2)") from exc
    if any(v < 1 for v in values):
        raise InputError(f"--threads {text}: thread counts must be at least 1")
    return values


def default_name(spec: str) -> str:
    path, precision = split_artifact(spec)
    return os.path.basename(path) + (f"@{precision}" if precision else "")


def artifact_names(text: str | None, specs: list) -> list[str]:
    """--names 'a,b' -> one name per artifact, in order; without it each file's name (with its @precision),
    or the path as given where two files share a name, so that no two rows read alike."""
    if text is None:
        names = [default_name(s) for s in specs]
        files = {n: {s for s, m in zip(specs, names) if m == n} for n in names}
        names = [s if len(files[n]) > 1 else n for n, s in zip(names, specs)]  # two files of one name: their paths
        seen: dict = {}
        for k, n in enumerate(names):  # one file listed twice: model.onnx, model.onnx#2
            seen[n] = seen.get(n, 0) + 1
            names[k] = n if seen[n] == 1 else f"{n}#{seen[n]}"
        return names
    names = [n.strip() for n in text.split(",")]
    if len(names) != len(specs):
        raise InputError(f"--names {text}: {len(names)} names for {len(specs)} artifacts; give one per ARTIFACT, "
                         "in order")
    if not all(names):
        raise InputError(f"--names {text}: an empty name; give one per ARTIFACT, in order")
    repeated = next((n for k, n in enumerate(names) if n in names[:k]), None)
    if repeated:
        raise InputError(f"--names {text}: '{repeated}' names two artifacts; every name must differ")
    return names


def check_counts(args: argparse.Namespace) -> None:
    """Refuse counts the timing loops cannot use, before any model is loaded."""
    for option, value, least in (("--iters", args.iters, 1), ("--warmup", args.warmup, 0), ("--rounds", args.rounds, 1),
                                 ("--batch", args.batch, 1)):
        if value is not None and value < least:
            raise InputError(f"{option} {value}: must be at least {least}")


def check_artifact(spec: str, backend: str | None) -> None:
    """A file the runtimes can open, checked before any timing starts (a bad last one would waste the others')."""
    check_artifact_file(split_artifact(spec)[0], backend)


def load_data(args: argparse.Namespace):
    """(dataset or None, the images latency is timed on or None for the synthetic one)."""
    if not args.data:
        return None, None
    coco = load_coco(args.data, image_dir_beside(args.data))
    if not coco.images:
        raise InputError(f"{args.data}: no images to time on")
    return coco, sample_images(coco, 8)


def parse_args(argv: list | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deploy/benchmark.py", description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                        help=".onnx, OpenVINO .xml or TensorRT .engine; model_fp32.xml@bf16 compiles an IR with "
                             "another inference precision (f32, bf16, f16)")
    parser.add_argument("--names", help="a name per ARTIFACT, comma-separated, in order, for the table and JSON "
                                        "(default: each file's name)")
    parser.add_argument("--backend", choices=sorted(set(RUNTIME_PACKAGES)),
                        help="override the runtime the suffix implies")
    parser.add_argument("--device", help="onnxruntime: cpu|cuda; openvino: CPU|GPU|NPU|AUTO")
    parser.add_argument("--batch", type=int, help="batch size for dynamic-batch artifacts (static ones keep theirs)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--threads",
                        help="runtime threads, or a list (1,2) to time each artifact at each (default: the runtime's)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time the whole list this many times, alternating (noisy machines)")
    parser.add_argument("--hint", default="LATENCY", help="OpenVINO performance hint")
    parser.add_argument("--resize", choices=("pil", "opencv"), default="pil",
                        help="the letterbox's resize: PIL (as training) or OpenCV (faster, where cv2 imports)")
    parser.add_argument("--cuda-graph", action="store_true", help="TensorRT: capture inference in a CUDA graph")
    parser.add_argument("--data", help="COCO annotations json; images in the folder the COCO layout puts them. Latency "
                                       "is timed on its first 8 images, and AP evaluated on all")
    parser.add_argument("--latency-only", action="store_true",
                        help="with --data: time on its images, but skip the AP evaluation (slow on a large split)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the table here")
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace) -> tuple[list, bool]:
    """(every entry, whether latency was timed on the synthetic image): the checks first, then each
    artifact at each thread setting, round after round."""
    check_counts(args)
    threads = thread_settings(args.threads)
    names = artifact_names(args.names, args.artifacts)
    for spec in args.artifacts:
        check_artifact(spec, args.backend)
    if args.resize == "opencv":
        try:
            import cv2  # noqa: F401
        except ImportError as exc:
            raise InputError("--resize opencv: OpenCV is not importable here "
                             "(pip install opencv-python-headless)") from exc
    preprocess_module.resize_backend = args.resize
    coco, images = load_data(args)
    evaluate_on = None if args.latency_only else coco
    entries = []
    for round_index in range(args.rounds):
        for spec, name in zip(args.artifacts, names):
            for t in threads:
                entry = benchmark(spec, name, args, evaluate_on if round_index == 0 else None, images, t)
                entry["round"] = round_index
                entries.append(entry)
                print(f"{name}{f' ({t} threads)' if t else ''}: done", file=sys.stderr, flush=True)
    return entries, images is None


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    try:
        entries, synthetic = run_all(args)
    except (InputError, DeviceError) as e:
        return report(e)
    text = table(entries) + (f"\n\n{SYNTHETIC_NOTE}" if synthetic else "")
    summary_text, summary = rounds_summary(entries) if args.rounds > 1 else ("", [])
    if summary_text:
        text += (f"\n\nMedian over {args.rounds} rounds (each round times every artifact once, in order):\n\n"
                 f"{summary_text}")
    print(text)
    machine = machine_info()
    result = {"machine": machine, "results": entries, "summary": summary,
              "settings": {"warmup": args.warmup, "iters": args.iters, "threads": args.threads, "rounds": args.rounds,
                           "data": args.data, "images": "synthetic" if synthetic else args.data,
                           "evaluate_ap": bool(args.data and not args.latency_only), "resize": args.resize}}
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        warnings = [f"- {e['precision_warning']}" for e in entries if e.get("precision_warning")]
        write_text(args.markdown, f"# Benchmark\n\nMachine: {machine_line(machine)}. Latency in ms per batch, "
                   f"{args.iters} timed iterations after {args.warmup} warm-up. `executed`: what the runtime reports "
                   f"it runs (read back after loading).\n\n{text}\n"
                   + ("\n" + "\n".join(warnings) + "\n" if warnings else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
