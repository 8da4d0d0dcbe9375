"""The quantize stage: the exported FP32 ONNX -> ONNX Runtime INT8 (QDQ), OpenVINO FP32 / FP16 / INT8
(NNCF), each measured on val by the deploy/ evaluator, timed, and gated on its INT8 AP drop.

    python -m pipeline.quantize --config configs/pipelines/default.yaml [key=value ...]

Writes runs/<run>/quantize/: model.int8.onnx (and model.int8.cpu.onnx on request),
openvino/model_{fp32,fp16,int8}.xml (+ .bin; openvino_bf16 is model_fp32.xml compiled for bf16 arithmetic,
where the CPU has it),
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

from deploy.errors import GateError, InputError
from deploy.evaluate import coco_eval
from deploy.files import check_writable, write_json, write_text
from deploy.measure import measure_artifact, sample_images
from deploy.predict import predict, runner_infer
from deploy.runtimes import open_runner
from deploy.runtimes.openvino import check_inference_precision
from export.quantize import (
    OPENVINO_INFERENCE,
    AccuracyControl,
    calibration_paths,
    keep_float_until,
    model_input,
    onnx_conv_sensitivity,
    openvino_float_convolutions,
    openvino_ir,
    preprocess_for_quantization,
    quantize_onnxruntime,
    quantize_openvino,
)
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.stage_data import load_split

SENSITIVITY_IMAGES = 32  # calibration images the per-layer sensitivity is measured on


def format_table(rows: dict[str, dict[str, Any]], reference_ap: float) -> str:
    """Markdown table, one row per artifact: accuracy, its change against PyTorch FP32, latency, size."""
    lines = ["| artifact | runtime | precision | executed | AP | AP50 | AP75 | ΔAP vs PyTorch | infer p50 ms | infer p99 ms "
             "| e2e p50 ms | images/s | size MB |", "|---" * 13 + "|"]
    for name, m in rows.items():
        lat, e2e = m["latency_ms"]["infer"], m["latency_ms"]["end_to_end"]
        executed = m.get("executed_precision", m["precision"]) + (" (!)" if m.get("precision_warning") else "")
        lines.append(f"| {name} | {m['backend']} | {m['precision']} | {executed} | {100 * m['AP']:.1f} | {100 * m['AP50']:.1f} "
                     f"| {100 * m['AP75']:.1f} | {100 * (m['AP'] - reference_ap):+.2f} | {lat['p50']:.2f} | {lat['p99']:.2f} "
                     f"| {e2e['p50']:.2f} | {lat['throughput_ips']:.1f} | {m['size_mb']:.2f} |")
    return "\n".join(lines)


def openvino_inference(qc) -> dict[str, str]:
    """The inference precision of every OpenVINO artifact: the defaults, then quantize.inference_precision."""
    for name, value in qc.inference_precision.items():
        if name not in OPENVINO_INFERENCE:
            raise InputError(f"quantize.inference_precision: '{name}' is no OpenVINO artifact; valid: {', '.join(OPENVINO_INFERENCE)}")
        check_inference_precision(value, f"quantize.inference_precision.{name}")
    return {**OPENVINO_INFERENCE, **qc.inference_precision}


def _ap_of(infer, coco, input_size: tuple[int, int], batch: int | None) -> float:
    """AP in points of an infer function on a dataset."""
    return 100 * coco_eval(coco, predict(infer, coco, input_size, fixed_batch=batch))["AP"]


def run_quantize(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Build and measure the configured artifacts; raise GateError (after writing metrics) when an INT8
    artifact loses more than quantize.max_map_drop AP against FP32."""
    qc, ec = cfg.quantize, cfg.export
    fp32 = cfg.run_dir / "export" / "model.onnx"
    export_json = cfg.run_dir / "export" / "metrics.json"
    if not fp32.is_file() or not export_json.is_file():
        raise InputError(f"{fp32} or its metrics.json missing: run `make export` first")
    check_writable(out_dir / "openvino")
    exported = json.loads(export_json.read_text())
    input_size = tuple(exported["input_size"])
    float_ap = 100 * exported["onnxruntime_fp32"]["AP"]
    train, val = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    paths = calibration_paths(train, qc.calib_images, qc.seed)
    decoded = sample_images(val, 8)
    threads = ec.threads or None
    options = {"openvino": {"threads": threads, "hint": qc.openvino_hint, "cache_dir": qc.openvino_cache_dir},
               "onnxruntime": {"threads": threads}}
    rows: dict[str, dict[str, Any]] = {}

    inference = openvino_inference(qc)
    skipped: dict[str, str] = {}

    def measure(name: str, path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
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

    if {"onnxruntime_int8", "onnxruntime_int8_cpu"} & set(qc.artifacts):
        with tempfile.TemporaryDirectory() as work:
            prepared = preprocess_for_quantization(fp32, Path(work) / "prepared.onnx")
            if "onnxruntime_int8" in qc.artifacts:
                int8 = quantize_onnxruntime(prepared, out_dir / "model.int8.onnx", paths, input_size,
                                            method=qc.calibration, symmetric=qc.symmetric_activations)
                m = measure("onnxruntime_int8", int8)
                if float_ap - 100 * m["AP"] > qc.max_map_drop and qc.accuracy_aware:
                    _onnxruntime_accuracy_aware(qc, prepared, int8, paths, val, input_size, float_ap, measure)
            if "onnxruntime_int8_cpu" in qc.artifacts:
                measure("onnxruntime_int8_cpu", quantize_onnxruntime(prepared, out_dir / "model.int8.cpu.onnx", paths,
                                                                     input_size, method=qc.calibration, symmetric=False))
    if {"openvino_fp32", "openvino_bf16", "openvino_int8"} & set(qc.artifacts):
        fp32_xml = openvino_ir(fp32, out_dir / "openvino" / "model_fp32.xml")
        measure("openvino_fp32", fp32_xml)
        if "openvino_bf16" in qc.artifacts:
            try:  # the runner refuses a CPU without BF16, and a compile a capped ISA (ONEDNN_MAX_CPU_ISA) cannot do
                measure("openvino_bf16", fp32_xml)
            except InputError as e:
                skipped["openvino_bf16"] = str(e)
                print(f"[quantize] openvino_bf16 skipped: {e}", flush=True)
    if "openvino_fp16" in qc.artifacts:
        measure("openvino_fp16", openvino_ir(fp32, out_dir / "openvino" / "model_fp16.xml", fp16=True))
    if "openvino_int8" in qc.artifacts:
        int8_xml = out_dir / "openvino" / "model_int8.xml"
        m = measure("openvino_int8", quantize_openvino(fp32, int8_xml, paths, input_size))
        if float_ap - 100 * m["AP"] > qc.max_map_drop and qc.accuracy_aware:
            _openvino_accuracy_aware(qc, fp32, int8_xml, paths, val, input_size, float_ap, measure)

    everything = {"pytorch": exported["pytorch"], "onnxruntime_fp32": exported["onnxruntime_fp32"], **rows}
    table = format_table(everything, exported["pytorch"]["AP"])
    result = {"artifacts": rows, "skipped": skipped,
              "reference": {"pytorch_AP": exported["pytorch"]["AP"], "fp32_AP": float_ap / 100},
              "calibration": {"images": len(paths), "method": qc.calibration, "seed": qc.seed},
              "gate": {"max_map_drop": qc.max_map_drop}}
    write_json(out_dir / "metrics.json", result)
    write_text(out_dir / "table.md", f"AP on {len(val.images)} val images (percent); latency at batch "
               f"{ec.batch}, {ec.iters} timed iterations.\n\n{table}\n")
    print(table, flush=True)
    for name, m in rows.items():
        drop = float_ap - 100 * m["AP"]
        if m["precision"] == "int8" and drop > qc.max_map_drop:
            raise GateError(f"stage quantize: {name} loses {drop:.2f} AP against FP32 > max {qc.max_map_drop} "
                            f"(quantize.max_map_drop); artifacts left in {out_dir}")
    return result


def _onnxruntime_accuracy_aware(qc, prepared: Path, int8: Path, paths: list[str], val, input_size, float_ap: float,
                                measure) -> dict[str, Any]:
    """Keep the most sensitive Conv layers (lowest SQNR) in float, fewest first, until the gate holds."""
    ranked = onnx_conv_sensitivity(prepared, int8, paths[:SENSITIVITY_IMAGES], input_size)
    print(f"[quantize] onnxruntime_int8 over the gate: searching among {len(ranked)} convolutions", flush=True)

    def evaluate(kept: list[str]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            trial = quantize_onnxruntime(prepared, Path(tmp) / "trial.onnx", paths, input_size, kept, qc.calibration,
                                         qc.symmetric_activations)
            runner = open_runner(str(trial))
            ap = _ap_of(runner_infer(runner), val, input_size, runner.batch)
        print(f"[quantize]   {len(kept)} layers in float: AP {ap:.2f}", flush=True)
        return ap

    kept, trials = keep_float_until([name for name, _ in ranked], evaluate, float_ap, qc.max_map_drop, qc.max_float_layers)
    sqnr = dict(ranked)
    extra = {"kept_float": [{"layer": n, "sqnr_db": round(sqnr[n], 2)} for n in kept], "search": trials}
    if kept:
        quantize_onnxruntime(prepared, int8, paths, input_size, kept, qc.calibration, qc.symmetric_activations)
    return measure("onnxruntime_int8", int8, extra)


def _openvino_accuracy_aware(qc, fp32: Path, int8_xml: Path, paths: list[str], val, input_size, float_ap: float,
                             measure) -> dict[str, Any]:
    """NNCF's accuracy control on val; report the convolutions it reverted to float."""
    import openvino as ov

    def validate(compiled, items: list) -> float:
        subset = replace(val, images=items)
        def infer(x: np.ndarray):
            out = compiled(x)
            return np.asarray(out[compiled.output("boxes")]), np.asarray(out[compiled.output("scores")])
        return _ap_of(infer, subset, input_size, 1)

    default_float = set(openvino_float_convolutions(ov.Core().read_model(str(int8_xml))))
    control = AccuracyControl(val.images, lambda info: model_input(val.image_path(info), input_size),
                              validate, qc.max_map_drop)
    quantize_openvino(fp32, int8_xml, paths, input_size, control)
    reverted = [n for n in openvino_float_convolutions(ov.Core().read_model(str(int8_xml))) if n not in default_float]
    return measure("openvino_int8", int8_xml, {"kept_float": [{"layer": n} for n in reverted],
                                               "accuracy_control": "nncf.quantize_with_accuracy_control"})


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="python -m pipeline.quantize", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        run_quantize(cfg, cfg.run_dir / "quantize", progress=not args.no_progress)

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
