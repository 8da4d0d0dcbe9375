"""`make benchmark`: deploy/benchmark.py over every artifact of the run that this machine can execute;
the others are listed as skipped, with the reason.

    python -m pipeline.stages.benchmark --config configs/pipelines/default.yaml [benchmark.evaluate=true] [key=value ...]

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
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.run_lock import run_lock

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "benchmark.py"


def artifacts(cfg: PipelineConfig) -> tuple[list[str], list[tuple[str, str]]]:
    """(runnable artifacts as deploy/benchmark.py arguments, [(artifact, why skipped)]) of the run. OpenVINO
    IRs run with the inference precision the quantize stage measured them with (openvino_bf16 is the FP32 IR @bf16)."""
    found = [paths.onnx_model(cfg), paths.onnxruntime_int8(cfg), paths.onnxruntime_int8(cfg, cpu=True), paths.tensorrt_int8_onnx(cfg),
             *sorted(paths.openvino_dir(cfg).glob("model_*.xml")), paths.qat_onnx(cfg), paths.qat_openvino(cfg),
             *sorted(paths.engines_dir(cfg).glob("*.engine"))]
    found = [p for p in found if p.is_file()]
    quantize_json = paths.metrics_file(cfg, "quantize")
    quantized = json.loads(quantize_json.read_text()) if quantize_json.is_file() else {}
    specs: list[str] = []
    for p in found:
        asked = [m.get("inference_precision") for m in quantized.get("artifacts", {}).values()
                 if Path(m["artifact"]).resolve() == p.resolve()]
        specs += [join_artifact(p, ip) for ip in dict.fromkeys(asked or [None])]
    skipped = [(f"{paths.openvino_ir(cfg, 'fp32')}@bf16 ({name})", why)
               for name, why in quantized.get("skipped", {}).items()]
    trt_reason = available()
    runnable = [s for s in specs if not s.endswith(".engine") or not trt_reason]
    skipped += [(s, trt_reason) for s in specs if s.endswith(".engine") and trt_reason]
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
    cmd = [sys.executable, str(DEPLOY), *runnable, "--warmup", str(bc.warmup), "--iters", str(bc.iters),
           "--json", str(out_dir / "benchmark.json"), "--markdown", str(out_dir / "benchmark.md")]
    if bc.evaluate:
        cmd += ["--data", str(Path(cfg.data.root) / cfg.data.val_annotations)]
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
