"""TensorRT engines from the run's ONNX files (what `make export-trt PRECISION=fp16|int8` runs, on a GPU
box or on the Jetson itself): fp32/fp16 from export/model.onnx, int8 from quantize/model.int8.trt.onnx
or, with engines.int8_source=qat, qat/model.qat.onnx (explicit quantization, its Q/DQ form checked by
the builder before it parses). The builder is deploy/build_engine.py, the same code a board runs from
the copied deploy/ folder. Each engine is measured by the deploy/ evaluator.

    python -m pipeline.stages.engines --config configs/pipelines/default.yaml --precision fp16 [key=value ...]

Writes runs/<run>/engines/model_<precision>.engine, its .json, timing.cache and metrics_<precision>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deploy import metrics_file
from deploy.build_engine import EngineConfig, build_engine
from deploy.errors import InputError
from deploy.files import write_json
from deploy.measure import measure_artifact, sample_images
from deploy.runtimes import input_size, open_runner
from deploy.runtimes.tensorrt import available
from pipeline import paths
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.run_lock import run_lock
from pipeline.stages.data import load_split


def run_export_trt(cfg: PipelineConfig, precision: str, dla_core: int | None = None,
                   workspace_mb: int = 2048, nms: bool = False) -> dict[str, Any]:
    """Build, then measure on val; return the engine's metrics."""
    reason = available()
    if reason:
        raise InputError(f"cannot build TensorRT engines here: {reason}")
    source = paths.engine_source(cfg, precision)
    if not source.is_file():
        stage = ("export`" if precision != "int8" else "qat`" if cfg.engines.int8_source == "qat"
                 else "quantize` (with onnxruntime_int8_trt in quantize.artifacts)")
        raise InputError(f"{source} not found: run `make {stage} first")
    out_dir = paths.engines_dir(cfg)
    engine = build_engine(source, out_dir / f"model_{precision}.engine",
                          EngineConfig(precision=precision, workspace_mb=workspace_mb, dla_core=dla_core,
                                       max_batch=cfg.export.batch, timing_cache=str(out_dir / "timing.cache"), nms=nms))
    val = load_split(cfg.data, "val")
    runner = open_runner(str(engine))
    height, width = input_size(runner)
    metrics, results = measure_artifact(runner, val, (height, width), cfg.export.warmup, cfg.export.iters,
                                        sample_images(val, 8))
    write_json(out_dir / f"predictions_{precision}.json", results)
    write_json(out_dir / f"metrics_{precision}.json", metrics_file.layout({f"tensorrt_{precision}": metrics}))
    print(f"[export-trt] {engine}: AP {100 * metrics['AP']:.2f}, "
          f"infer p50 {metrics['latency_ms']['infer']['p50']:.2f} ms")
    return metrics


def run_engines(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """The pipeline's engines stage: every precision in cfg.engines where TensorRT can build, else a
    record of why not (so the report says it rather than leaving a silent gap)."""
    reason = available()
    if reason:
        print(f"[engines] skipped: {reason}", flush=True)
        result: dict[str, Any] = {"skipped": reason}
    else:
        result = {"engines": {p: run_export_trt(cfg, p, cfg.engines.dla_core, cfg.engines.workspace_mb,
                                                cfg.engines.efficient_nms)
                              for p in cfg.engines.precisions}}
    write_json(out_dir / "engines.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd engines", description=__doc__.split("\n")[0]))
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    parser.add_argument("--dla-core", type=int, help="Jetson DLA core (GPU fallback on)")
    parser.add_argument("--workspace-mb", type=int, default=2048)
    parser.add_argument("--nms", action="store_true", help="NMS in the engine (EfficientNMS_TRT)")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        with run_lock(cfg.run_dir, "edgekd engines"):
            run_export_trt(cfg, args.precision, args.dla_core, args.workspace_mb, args.nms)

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
