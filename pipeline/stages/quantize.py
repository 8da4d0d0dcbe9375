"""The quantize stage: the exported FP32 ONNX -> ONNX Runtime INT8 (QDQ), OpenVINO FP32 / FP16 / INT8
(NNCF), each measured on val by the deploy/ evaluator, timed, and gated on its INT8 AP drop.

    python -m pipeline.stages.quantize --config configs/pipelines/default.yaml [key=value ...]

Writes runs/<run>/quantize/: model.int8.onnx, model.int8.trt.onnx (the Q/DQ form TensorRT builds from,
checked by deploy/qdq_check.py), model.int8.cpu.onnx on request,
openvino/model_{fp32,fp16,int8}.xml (+ .bin; openvino_bf16 is model_fp32.xml compiled for bf16 arithmetic,
where the CPU has it; model_int8.uint8.xml with export.uint8_input, model_int8.nms.xml with export.nms: graph),
predictions_<artifact>.json, metrics.json ({"artifacts": {name: metrics}, ...}) and table.md, the
table across every artifact (PyTorch and ONNX Runtime FP32 from the export stage included).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import InputError
from deploy.evaluate import coco_eval
from deploy.files import check_writable, write_json, write_text
from deploy.measure import measure_artifact, sample_images
from deploy.predict import predict, runner_infer
from deploy.qdq_check import check_tensorrt_qdq
from deploy.runtimes import open_runner
from deploy.runtimes.openvino import check_inference_precision
from deploy.tables import markdown_table
from export.calibration import calibration_paths, model_input
from export.onnxruntime_int8 import (
    onnxruntime_accuracy_aware,
    preprocess_for_quantization,
    quantize_onnxruntime,
)
from export.openvino_int8 import (
    OPENVINO_INFERENCE,
    AccuracyControl,
    openvino_accuracy_aware,
    openvino_ir,
    openvino_nms_ir,
    openvino_uint8_input,
    quantize_openvino,
)
from pipeline import paths
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.gates import check_gate
from pipeline.progress import step_printer
from pipeline.run_lock import run_lock
from pipeline.stages.data import load_split


def format_table(rows: dict[str, dict[str, Any]], reference_ap: float) -> str:
    """Markdown table, one row per artifact: accuracy, its change against PyTorch FP32, latency, size."""
    cells = []
    for name, m in rows.items():
        lat, e2e = m["latency_ms"]["infer"], m["latency_ms"]["end_to_end"]
        executed = m.get("executed_precision", m["precision"]) + (" (!)" if m.get("precision_warning") else "")
        cells.append([name, m["backend"], m["precision"], executed, f"{100 * m['AP']:.1f}", f"{100 * m['AP50']:.1f}",
                      f"{100 * m['AP75']:.1f}", f"{100 * (m['AP'] - reference_ap):+.2f}", f"{lat['p50']:.2f}",
                      f"{lat['p99']:.2f}", f"{e2e['p50']:.2f}", f"{lat['throughput_ips']:.1f}", f"{m['size_mb']:.2f}"])
    return markdown_table(["artifact", "runtime", "precision", "executed", "AP", "AP50", "AP75", "ΔAP vs PyTorch",
                           "infer p50 ms", "infer p99 ms", "e2e p50 ms", "images/s", "size MB"], cells)


def openvino_inference(qc) -> dict[str, str]:
    """The inference precision of every OpenVINO artifact: the defaults, then quantize.inference_precision."""
    for name, value in qc.inference_precision.items():
        if name not in OPENVINO_INFERENCE:
            raise InputError(f"quantize.inference_precision: '{name}' is no OpenVINO artifact; valid: {', '.join(OPENVINO_INFERENCE)}")
        check_inference_precision(value, f"quantize.inference_precision.{name}")
    return {**OPENVINO_INFERENCE, **qc.inference_precision}


def _file_ap(path: Path, coco, input_size: tuple[int, int]) -> float:
    """AP in points of a model file on a dataset."""
    runner = open_runner(str(path))
    return 100 * coco_eval(coco, predict(runner_infer(runner), coco, input_size, fixed_batch=runner.batch))["AP"]


def _compiled_ap(compiled, coco, input_size: tuple[int, int]) -> float:
    """AP in points of an OpenVINO compiled model (NNCF's validation hands one) on a dataset."""
    def infer(x: np.ndarray):
        out = compiled(x)
        return np.asarray(out[compiled.output("boxes")]), np.asarray(out[compiled.output("scores")])
    return 100 * coco_eval(coco, predict(infer, coco, input_size, fixed_batch=1))["AP"]


def planned_artifacts(cfg: PipelineConfig) -> list[str]:
    """The artifacts the quantize stage builds and measures, in its order (for its progress lines)."""
    asked, ec = cfg.quantize.artifacts, cfg.export
    ort = [a for a in ("onnxruntime_int8", "onnxruntime_int8_cpu", "onnxruntime_int8_trt") if a in asked]
    ov_float = ["openvino_fp32", *(["openvino_bf16"] if "openvino_bf16" in asked else [])] \
        if {"openvino_fp32", "openvino_bf16", "openvino_int8"} & set(asked) else []
    ov_int8 = ["openvino_int8", *(["openvino_int8_uint8"] if ec.uint8_input else []),
               *(["openvino_int8_nms"] + (["openvino_int8_uint8_nms"] if ec.uint8_input else []) if ec.nms == "graph" else [])] \
        if "openvino_int8" in asked else []
    return [*ort, *ov_float, *(["openvino_fp16"] if "openvino_fp16" in asked else []), *ov_int8]


def run_quantize(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Build and measure the configured artifacts, write metrics.json and table.md; an INT8 artifact over
    quantize.max_map_drop is first searched back under it (quantize.accuracy_aware)."""
    qc, ec = cfg.quantize, cfg.export
    fp32, export_json = paths.onnx_model(cfg), paths.metrics_file(cfg, "export")
    if not fp32.is_file() or not export_json.is_file():
        raise InputError(f"{fp32} or its metrics.json missing: run `make export` first")
    if ec.nms == "graph" and not paths.graph_nms_onnx(cfg).is_file():  # before any INT8 work, not after it
        raise InputError(f"{paths.graph_nms_onnx(cfg)} missing (export.nms: graph): run `make export` with it first")
    check_writable(paths.openvino_dir(cfg))
    exported = json.loads(export_json.read_text())
    input_size = tuple(exported["input_size"])
    float_ap = 100 * exported["onnxruntime_fp32"]["AP"]
    train, val = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    calib = calibration_paths(train, qc.calib_images, qc.seed)
    decoded = sample_images(val, 8)
    threads = ec.threads or None
    options = {"openvino": {"threads": threads, "hint": qc.openvino_hint, "cache_dir": qc.openvino_cache_dir},
               "onnxruntime": {"threads": threads}}
    rows: dict[str, dict[str, Any]] = {}

    inference = openvino_inference(qc)
    skipped: dict[str, str] = {}

    step = step_printer("quantize", planned_artifacts(cfg))

    def measure(name: str, path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        step(name)
        if path.suffix == ".xml":
            runner = open_runner(str(path), **options["openvino"], inference_precision=inference[name])
        else:
            runner = open_runner(str(path), **options["onnxruntime"])
        metrics, results = measure_artifact(runner, val, input_size, ec.warmup, ec.iters, decoded)
        metrics.update(extra or {}, delta_AP_vs_pytorch=metrics["AP"] - exported["pytorch"]["AP"],
                       delta_AP_vs_fp32=metrics["AP"] - exported["onnxruntime_fp32"]["AP"],
                       inference_precision=inference.get(name))
        write_json(out_dir / f"predictions_{name}.json", results)
        rows[name] = metrics
        print(f"[quantize] {name}: AP {100 * metrics['AP']:.2f} ({100 * metrics['delta_AP_vs_fp32']:+.2f} vs FP32), "
              f"infer p50 {metrics['latency_ms']['infer']['p50']:.2f} ms", flush=True)
        return metrics

    if {"onnxruntime_int8", "onnxruntime_int8_cpu", "onnxruntime_int8_trt"} & set(qc.artifacts):
        with tempfile.TemporaryDirectory() as work:
            prepared = preprocess_for_quantization(fp32, Path(work) / "prepared.onnx")
            if "onnxruntime_int8" in qc.artifacts:
                int8 = quantize_onnxruntime(prepared, paths.onnxruntime_int8(cfg), calib, input_size,
                                            method=qc.calibration, symmetric=qc.symmetric_activations)
                m = measure("onnxruntime_int8", int8)
                if float_ap - 100 * m["AP"] > qc.max_map_drop and qc.accuracy_aware:
                    measure("onnxruntime_int8", int8, onnxruntime_accuracy_aware(
                        prepared, int8, calib, input_size, lambda path: _file_ap(path, val, input_size), float_ap,
                        qc.max_map_drop, qc.max_float_layers, qc.calibration, qc.symmetric_activations))
            if "onnxruntime_int8_cpu" in qc.artifacts:
                measure("onnxruntime_int8_cpu", quantize_onnxruntime(prepared, paths.onnxruntime_int8(cfg, cpu=True), calib,
                                                                     input_size, method=qc.calibration, symmetric=False))
            if "onnxruntime_int8_trt" in qc.artifacts:  # what make export-trt PRECISION=int8 builds from
                trt_int8 = quantize_onnxruntime(prepared, paths.tensorrt_int8_onnx(cfg), calib, input_size,
                                                method=qc.calibration, tensorrt=True)
                check_tensorrt_qdq(trt_int8)
                m = measure("onnxruntime_int8_trt", trt_int8)
                if float_ap - 100 * m["AP"] > qc.max_map_drop and qc.accuracy_aware:
                    measure("onnxruntime_int8_trt", trt_int8, onnxruntime_accuracy_aware(
                        prepared, trt_int8, calib, input_size, lambda path: _file_ap(path, val, input_size), float_ap,
                        qc.max_map_drop, qc.max_float_layers, qc.calibration, tensorrt=True))
                    check_tensorrt_qdq(trt_int8)
    if {"openvino_fp32", "openvino_bf16", "openvino_int8"} & set(qc.artifacts):
        fp32_xml = openvino_ir(fp32, paths.openvino_ir(cfg, "fp32"))
        measure("openvino_fp32", fp32_xml)
        if "openvino_bf16" in qc.artifacts:
            try:  # the runner refuses a CPU without BF16, and a compile a capped ISA (ONEDNN_MAX_CPU_ISA) cannot do
                measure("openvino_bf16", fp32_xml)
            except InputError as e:
                skipped["openvino_bf16"] = str(e)
                print(f"[quantize] openvino_bf16 skipped: {e}", flush=True)
    if "openvino_fp16" in qc.artifacts:
        measure("openvino_fp16", openvino_ir(fp32, paths.openvino_ir(cfg, "fp16"), fp16=True))
    if "openvino_int8" in qc.artifacts:
        int8_xml = paths.openvino_ir(cfg, "int8")
        m = measure("openvino_int8", quantize_openvino(fp32, int8_xml, calib, input_size))
        if float_ap - 100 * m["AP"] > qc.max_map_drop and qc.accuracy_aware:
            control = AccuracyControl(val.images, lambda info: model_input(val.image_path(info), input_size),
                                      lambda compiled, items: _compiled_ap(compiled, replace(val, images=items), input_size),
                                      qc.max_map_drop)
            measure("openvino_int8", int8_xml, openvino_accuracy_aware(fp32, int8_xml, calib, input_size, control))
        if cfg.export.uint8_input:  # the same INT8 IR taking the letterboxed uint8 image (PrePostProcessor)
            measure("openvino_int8_uint8", openvino_uint8_input(int8_xml, paths.openvino_ir(cfg, "int8.uint8")))
        if ec.nms == "graph":  # NMS in the graph: the host only letterboxes and rescales
            # NMS appended to the INT8 IR reuses its calibration; a static batch-N IR cannot become batch 1,
            # so model.nms.onnx is quantized again then.
            nms_xml = (openvino_nms_ir(int8_xml, paths.openvino_ir(cfg, "int8.nms")) if ec.batch == 1 or ec.dynamic_batch
                       else quantize_openvino(paths.graph_nms_onnx(cfg), paths.openvino_ir(cfg, "int8.nms"), calib, input_size))
            measure("openvino_int8_nms", nms_xml)
            if ec.uint8_input:
                measure("openvino_int8_uint8_nms", openvino_uint8_input(nms_xml, paths.openvino_ir(cfg, "int8.uint8.nms")))

    everything = {"pytorch": exported["pytorch"], "onnxruntime_fp32": exported["onnxruntime_fp32"], **rows}
    table = format_table(everything, exported["pytorch"]["AP"])
    result = {"artifacts": rows, "skipped": skipped,
              "reference": {"pytorch_AP": exported["pytorch"]["AP"], "fp32_AP": float_ap / 100},
              "calibration": {"images": len(calib), "method": qc.calibration, "seed": qc.seed},
              "gate": {"max_map_drop": qc.max_map_drop}}
    write_json(out_dir / "metrics.json", result)
    write_text(out_dir / "table.md", f"AP on {len(val.images)} val images (percent); latency at batch "
               f"{ec.batch}, {ec.iters} timed iterations.\n\n{table}\n")
    print(table, flush=True)
    return result  # the gate (quantize.max_map_drop) is checked from metrics.json by pipeline.gates


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd quantize", description=__doc__.split("\n")[0]))
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        with run_lock(cfg.run_dir, "edgekd quantize"):
            run_quantize(cfg, paths.stage_dir(cfg, "quantize"), progress=not args.no_progress)
            print(f"[quantize] gate passed: {check_gate('quantize', cfg)}")

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
