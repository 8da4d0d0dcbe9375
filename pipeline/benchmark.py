"""`make benchmark`: deploy/benchmark.py over every artifact of the run that this machine can execute;
the others are listed as skipped, with the reason.

    python -m pipeline.benchmark --config configs/pipelines/default.yaml [key=value ...]

Writes runs/<run>/benchmark/benchmark.{json,md}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from deploy.runtimes.tensorrt import available
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "benchmark.py"


def artifacts(cfg: PipelineConfig) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(runnable artifacts, [(artifact, why skipped)]) of the run."""
    run = cfg.run_dir
    found = [run / "export" / "model.onnx", run / "quantize" / "model.int8.onnx", run / "quantize" / "model.int8.cpu.onnx",
             *sorted((run / "quantize" / "openvino").glob("model_*.xml")), *sorted((run / "engines").glob("*.engine"))]
    found = [p for p in found if p.is_file()]
    trt_reason = available()
    runnable = [p for p in found if p.suffix != ".engine" or not trt_reason]
    skipped = [(p, trt_reason) for p in found if p.suffix == ".engine" and trt_reason]
    return runnable, skipped


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="python -m pipeline.benchmark", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    status = {"code": 0}

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        runnable, skipped = artifacts(cfg)
        for path, why in skipped:
            print(f"skipped {path}: {why}")
        if not runnable:
            print(f"nothing to benchmark in {cfg.run_dir}: run `make export quantize` first")
            status["code"] = 2
            return
        out = cfg.run_dir / "benchmark"
        data = Path(cfg.data.root) / cfg.data.val_annotations
        cmd = [sys.executable, str(DEPLOY), *map(str, runnable), "--data", str(data), "--warmup", str(cfg.export.warmup),
               "--iters", str(cfg.export.iters), "--json", str(out / "benchmark.json"), "--markdown", str(out / "benchmark.md")]
        if cfg.export.threads:
            cmd += ["--threads", str(cfg.export.threads)]
        status["code"] = subprocess.run(cmd).returncode

    code = guarded(body, args.debug)
    return code or status["code"]


if __name__ == "__main__":
    sys.exit(main())
