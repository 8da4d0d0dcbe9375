"""The export stage: the pipeline's student (or export.checkpoint) -> runs/<run>/export/model.onnx,
gated on ONNX Runtime vs PyTorch parity, with both measured by the deploy/ evaluator.

    python -m pipeline.stages.export --config configs/pipelines/default.yaml [key=value ...]

Writes model.onnx, metrics.json ({"artifacts": {"onnxruntime_fp32": ...}, "reference": {"pytorch": ...},
"parity": ...}),
predictions.json (the ONNX model's) and predictions_pytorch.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy import metrics_file
from deploy.coco import CocoDataset
from deploy.errors import GateError, InputError
from deploy.evaluate import check_results
from deploy.files import write_json
from deploy.measure import measure_artifact, sample_images
from deploy.preprocess import model_input, preprocess_batch
from deploy.runtimes.onnxruntime import OrtRunner
from export.settings import ExportConfig
from pipeline import paths
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.progress import step_printer
from pipeline.run_lock import run_lock
from pipeline.stages.data import load_split

if TYPE_CHECKING:  # torch and onnx load when the stage runs, not for `edgekd export --help`
    from torch import nn


def run_export(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Export, check parity, and measure PyTorch and ONNX Runtime FP32; return metrics.json's content."""
    from distill.models.detector import load_detector
    from export.onnx import check_parity, export_onnx, parity
    from export.torch_runner import TorchRunner
    from pipeline.stages.profile import count_gflops

    ec = cfg.export
    source = paths.export_source(cfg)
    if not source.is_file():
        raise InputError(f"checkpoint to export not found: {source} (run `make distill`, or set export.checkpoint)")
    detector, classes, _ = load_detector(source)
    input_size = tuple(detector.cfg.input_size)
    val = load_split(cfg.data, "val")
    if classes != val.class_names:
        raise InputError(f"{source}: its classes {classes[:3]}... differ from the val set's {val.class_names[:3]}...")
    planned = ["model.onnx: export and parity", "pytorch: measure", "model.onnx: measure",
               *(["model.uint8.onnx: export and measure"] if ec.uint8_input else []),
               *(["model.nms.onnx: export and measure"] if ec.nms == "graph" else [])]
    step = step_printer("export", planned)
    step(planned[0])
    path = export_onnx(detector, classes, out_dir / "model.onnx", input_size, ec.opset, ec.batch, ec.dynamic_batch,
                       ec.slim, source=str(source))
    n = max(ec.batch, ec.parity_images - ec.parity_images % ec.batch)
    images, _ = preprocess_batch([val.image_path(i) for i in val.images[:n]], input_size)
    diff = parity(detector, path, images, ec.batch)
    print(f"[export] parity ONNX Runtime vs PyTorch on {len(images)} val images: scores {diff['scores_max_abs']:.2e}, "
          f"boxes {diff['boxes_max_abs']:.2e} px", flush=True)
    check_parity(diff, ec.score_atol, ec.box_atol, str(path))

    decoded = sample_images(val, 8)
    step("pytorch: measure")
    reference, ref_results = measure_artifact(TorchRunner(detector, str(source), ec.batch, ec.threads), val,
                                              input_size, ec.warmup, ec.iters, decoded)
    step("model.onnx: measure")
    onnx_metrics, results = measure_artifact(OrtRunner(str(path), threads=ec.threads or None), val, input_size,
                                             ec.warmup, ec.iters, decoded)
    onnx_metrics["delta_AP_vs_pytorch"] = onnx_metrics["AP"] - reference["AP"]
    check_results(val, results, str(path))
    if ec.uint8_input:
        step("model.uint8.onnx: export and measure")
    uint8 = (uint8_artifact(detector, classes, out_dir, input_size, val, decoded, source, path, ec)
             if ec.uint8_input else {})
    if ec.nms == "graph":
        step("model.nms.onnx: export and measure")
        uint8.update(graph_nms_artifact(detector, classes, out_dir, input_size, val, decoded, source, onnx_metrics, ec))
    model = {"params": sum(p.numel() for p in detector.parameters()), "gflops": count_gflops(detector, input_size)}
    write_json(out_dir / "predictions_pytorch.json", ref_results)
    write_json(out_dir / "predictions.json", results)
    return metrics_file.write(out_dir, {"onnxruntime_fp32": onnx_metrics, **uint8}, {"pytorch": reference},
                              parity=diff, input_size=list(input_size), classes=classes, source=str(source),
                              model=model)


def uint8_artifact(detector: nn.Module, classes: list[str], out_dir: Path, input_size: tuple[int, int],
                   val: CocoDataset, decoded: list[np.ndarray], source: Path, float_path: Path,
                   ec: ExportConfig) -> dict[str, Any]:
    """model.uint8.onnx (export.uint8_input), measured like model.onnx, with its outputs against the float
    file's on the same val images (the uint8 letterbox pads with the mean colour rounded to uint8)."""
    from export.onnx import export_onnx

    path = export_onnx(detector, classes, out_dir / "model.uint8.onnx", input_size, ec.opset, ec.batch,
                       ec.dynamic_batch, ec.slim, source=str(source), uint8_input=True)
    runner, float_runner = OrtRunner(str(path), threads=ec.threads or None), OrtRunner(str(float_path))
    worst = {"scores_max_abs": 0.0, "boxes_max_abs": 0.0}
    for image in decoded:
        got = runner.infer(np.stack([model_input(image, input_size, uint8=True)[0]] * ec.batch))
        ref = float_runner.infer(np.stack([model_input(image, input_size)[0]] * ec.batch))
        worst = {"scores_max_abs": max(worst["scores_max_abs"], float(np.abs(got["scores"] - ref["scores"]).max())),
                 "boxes_max_abs": max(worst["boxes_max_abs"], float(np.abs(got["boxes"] - ref["boxes"]).max()))}
    metrics, results = measure_artifact(runner, val, input_size, ec.warmup, ec.iters, decoded)
    metrics["vs_float_input"] = worst
    print(f"[export] model.uint8.onnx vs model.onnx on {len(decoded)} val images: "
          f"scores {worst['scores_max_abs']:.2e}, boxes {worst['boxes_max_abs']:.2e} px; AP {100 * metrics['AP']:.2f}",
          flush=True)
    write_json(out_dir / "predictions_uint8.json", results)
    return {"onnxruntime_fp32_uint8": metrics}


def graph_nms_artifact(detector: nn.Module, classes: list[str], out_dir: Path, input_size: tuple[int, int],
                       val: CocoDataset, decoded: list[np.ndarray], source: Path, host: dict[str, Any],
                       ec: ExportConfig) -> dict[str, Any]:
    """model.nms.onnx (export.nms: graph), measured like model.onnx; its AP must stay within 0.1 of host NMS's."""
    from export.onnx import export_onnx

    path = export_onnx(detector, classes, out_dir / "model.nms.onnx", input_size, ec.opset, slim=ec.slim,
                       source=str(source), graph_nms=True)
    metrics, results = measure_artifact(OrtRunner(str(path), threads=ec.threads or None), val, input_size,
                                        ec.warmup, ec.iters, decoded)
    metrics["delta_AP_vs_host_nms"] = metrics["AP"] - host["AP"]
    print(f"[export] model.nms.onnx (NMS in the graph): AP {100 * metrics['AP']:.2f} "
          f"({100 * metrics['delta_AP_vs_host_nms']:+.2f} vs host NMS)", flush=True)
    if abs(metrics["delta_AP_vs_host_nms"]) > 0.001:
        raise GateError(f"{path}: AP {100 * metrics['AP']:.2f} with NMS in the graph, "
                        f"{100 * host['AP']:.2f} with host NMS: more than 0.1 apart")
    write_json(out_dir / "predictions_nms.json", results)
    return {"onnxruntime_fp32_nms": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd export", description=__doc__.split("\n")[0]))
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        from pipeline.stages.quantize import format_table  # one table format for every artifact

        cfg = load_config(args.config, args.overrides)
        with run_lock(cfg.run_dir, "edgekd export"):
            metrics = run_export(cfg, paths.stage_dir(cfg, "export"), progress=not args.no_progress)
            pytorch = metrics["reference"]["pytorch"]
            print(format_table({"pytorch": pytorch, **metrics["artifacts"]}, pytorch["AP"]))

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
