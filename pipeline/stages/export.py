"""The export stage: the pipeline's student (or export.checkpoint) -> runs/<run>/export/model.onnx,
gated on ONNX Runtime vs PyTorch parity, with both measured by the deploy/ evaluator.

    python -m pipeline.stages.export --config configs/pipelines/default.yaml [key=value ...]

Writes model.onnx, metrics.json ({"pytorch": ..., "onnxruntime_fp32": ..., "parity": ...}),
predictions.json (the ONNX model's) and predictions_pytorch.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deploy.errors import InputError
from deploy.evaluate import check_results
from deploy.files import write_json
from deploy.measure import measure_artifact, sample_images
from deploy.preprocess import preprocess_batch
from deploy.runtimes.onnxruntime import OrtRunner
from distill.models.detector import load_detector
from export.onnx import check_parity, export_onnx, parity
from export.torch_runner import TorchRunner
from pipeline import paths
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.stages.data import load_split
from pipeline.stages.profile import count_gflops


def run_export(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Export, check parity, and measure PyTorch and ONNX Runtime FP32; return metrics.json's content."""
    ec = cfg.export
    source = paths.export_source(cfg)
    if not source.is_file():
        raise InputError(f"checkpoint to export not found: {source} (run `make distill`, or set export.checkpoint)")
    detector, classes, _ = load_detector(source)
    input_size = tuple(detector.cfg.input_size)
    val = load_split(cfg.data, "val")
    if classes != val.class_names:
        raise InputError(f"{source}: its classes {classes[:3]}... differ from the val set's {val.class_names[:3]}...")
    path = export_onnx(detector, classes, out_dir / "model.onnx", input_size, ec.opset, ec.batch, ec.dynamic_batch,
                       ec.slim, source=str(source))
    n = max(ec.batch, ec.parity_images - ec.parity_images % ec.batch)
    images, _ = preprocess_batch([val.image_path(i) for i in val.images[:n]], input_size)
    diff = parity(detector, path, images, ec.batch)
    print(f"[export] parity ONNX Runtime vs PyTorch on {len(images)} val images: scores {diff['scores_max_abs']:.2e}, "
          f"boxes {diff['boxes_max_abs']:.2e} px", flush=True)
    check_parity(diff, ec.score_atol, ec.box_atol, str(path))

    decoded = sample_images(val, 8)
    reference, ref_results = measure_artifact(TorchRunner(detector, str(source), ec.batch, ec.threads), val,
                                              input_size, ec.warmup, ec.iters, decoded)
    onnx_metrics, results = measure_artifact(OrtRunner(str(path), threads=ec.threads or None), val, input_size,
                                             ec.warmup, ec.iters, decoded)
    onnx_metrics["delta_AP_vs_pytorch"] = onnx_metrics["AP"] - reference["AP"]
    check_results(val, results, str(path))
    model = {"params": sum(p.numel() for p in detector.parameters()), "gflops": count_gflops(detector, input_size)}
    metrics = {"pytorch": reference, "onnxruntime_fp32": onnx_metrics, "parity": diff, "input_size": list(input_size),
               "classes": classes, "source": str(source), "model": model}
    write_json(out_dir / "predictions_pytorch.json", ref_results)
    write_json(out_dir / "predictions.json", results)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd export", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)

    def body() -> None:
        from pipeline.stages.quantize import format_table  # one table format for every artifact

        cfg = load_config(args.config, args.overrides)
        metrics = run_export(cfg, paths.stage_dir(cfg, "export"), progress=not args.no_progress)
        print(format_table({"pytorch": metrics["pytorch"], "onnxruntime_fp32": metrics["onnxruntime_fp32"]},
                           metrics["pytorch"]["AP"]))

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
