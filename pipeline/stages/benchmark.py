"""`make benchmark`: deploy/benchmark.py over every artifact of the run that this machine can execute;
the others are listed as skipped, with the reason.

    python -m pipeline.stages.benchmark --config configs/pipelines/default.yaml \\
        [benchmark.evaluate=true] [key=value ...]

Writes runs/<run>/benchmark/benchmark.{json,md}; latency only unless benchmark.evaluate (each stage
measured its artifacts' AP already).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.benchmark import join_artifact
from deploy.errors import InputError
from deploy.files import write_json
from deploy.runtimes.tensorrt import available
from pipeline import paths
from pipeline.artifacts import run_artifacts, stage_metrics
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.run_lock import run_lock

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "benchmark.py"


def artifacts(cfg: PipelineConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(stage-qualified name, deploy/benchmark.py argument)] runnable here, [(artifact, why skipped)]) of the
    run. OpenVINO IRs run with the inference precision their stage measured them with (quantize/openvino_bf16
    is the FP32 IR @bf16)."""
    quantized = stage_metrics(cfg, "quantize")
    specs = [(a.name, join_artifact(a.path, a.inference_precision)) for a in run_artifacts(cfg)]
    skipped = [(f"{paths.openvino_ir(cfg, 'fp32')}@bf16 (quantize/{name})", why)
               for name, why in quantized.get("skipped", {}).items()]
    trt_reason = available()
    runnable = [(n, s) for n, s in specs if not s.endswith(".engine") or not trt_reason]
    skipped += [(s, trt_reason) for n, s in specs if s.endswith(".engine") and trt_reason]
    return runnable, skipped


def run_benchmark(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Time every runnable artifact side by side in one deploy/benchmark.py process (torch-free, as on
    the device); return benchmark.json's content."""
    runnable, skipped = artifacts(cfg)
    for path, why in skipped:
        print(f"[benchmark] skipped {path}: {why}", flush=True)
    if not runnable:
        raise InputError(f"nothing to benchmark in {cfg.run_dir}: run the export and quantize stages first")
    bc = cfg.benchmark
    # Always on the val images, taken in turn: a blank canvas has no candidates for NMS and needs no resize,
    # so its end-to-end time was the model's alone. Their AP only with benchmark.evaluate (each stage measured it).
    cmd = [sys.executable, str(DEPLOY), *(s for _, s in runnable), "--names", ",".join(n for n, _ in runnable),
           "--warmup", str(bc.warmup), "--iters", str(bc.iters),
           "--data", str(Path(cfg.data.root) / cfg.data.val_annotations),
           "--json", str(out_dir / "benchmark.json"), "--markdown", str(out_dir / "benchmark.md")]
    if not bc.evaluate:
        cmd.append("--latency-only")
    if bc.threads:
        cmd += ["--threads", str(bc.threads)]
    if bc.resize != "pil":
        cmd += ["--resize", bc.resize]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode:
        raise InputError(f"deploy/benchmark.py failed with exit code {done.returncode} (its message is above)")
    result = json.loads((out_dir / "benchmark.json").read_text())
    result["skipped"] = [{"artifact": str(p), "reason": why} for p, why in skipped]
    write_json(out_dir / "benchmark.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd benchmark", description=__doc__.split("\n")[0]))
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        with run_lock(cfg.run_dir, "edgekd benchmark"):
            run_benchmark(cfg, paths.stage_dir(cfg, "benchmark"))

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
