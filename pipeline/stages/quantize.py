"""The quantize stage: the exported FP32 ONNX -> ONNX Runtime INT8 (QDQ), OpenVINO FP32 / FP16 / INT8
(NNCF), each measured on val by the deploy/ evaluator, timed, and gated on its INT8 AP drop.

    python -m pipeline.stages.quantize --config configs/pipelines/default.yaml [key=value ...]

Writes runs/<run>/quantize/: model.int8.onnx, model.int8.trt.onnx (the Q/DQ form TensorRT builds from,
checked by deploy/qdq_check.py), model.int8.cpu.onnx on request,
openvino/model_{fp32,fp16,int8}.xml (+ .bin; openvino_bf16 is model_fp32.xml compiled for bf16 arithmetic,
where the CPU has it; model_int8.uint8.xml with export.uint8_input, model_int8.nms.xml with export.nms: graph),
predictions_<artifact>.json, metrics.json ({"artifacts": {name: metrics}, "reference": ...}) and table.md, the
table across every artifact (PyTorch and ONNX Runtime FP32 from the export stage included).

run_quantize draws the calibration images once, then calls one builder per planned artifact (BUILDERS),
each building its file with export/onnxruntime_int8.py or export/openvino_int8.py and returning its row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploy import metrics_file
from deploy.coco import CocoDataset
from deploy.errors import InputError
from deploy.evaluate import coco_eval
from deploy.files import check_writable, write_json, write_text
from deploy.measure import measure_artifact, sample_images
from deploy.metrics_file import measurement
from deploy.predict import predict, runner_infer
from deploy.qdq_check import check_tensorrt_qdq
from deploy.runtimes import open_runner
from deploy.runtimes.openvino import check_inference_precision
from deploy.tables import markdown_table
from export.calibration import calibration_paths, model_input
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
from pipeline.artifacts import exported_reference
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
            raise InputError(f"quantize.inference_precision: '{name}' is no OpenVINO artifact; "
                             f"valid: {', '.join(OPENVINO_INFERENCE)}")
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
    """The artifacts the quantize stage builds and measures, in its order: what run_quantize builds (BUILDERS)
    and what its progress lines count."""
    asked, ec = cfg.quantize.artifacts, cfg.export
    ort = [a for a in ("onnxruntime_int8", "onnxruntime_int8_cpu", "onnxruntime_int8_trt") if a in asked]
    ov_float = ["openvino_fp32", *(["openvino_bf16"] if "openvino_bf16" in asked else [])] \
        if {"openvino_fp32", "openvino_bf16", "openvino_int8"} & set(asked) else []
    nms = ["openvino_int8_nms", *(["openvino_int8_uint8_nms"] if ec.uint8_input else [])] if ec.nms == "graph" else []
    ov_int8 = ["openvino_int8", *(["openvino_int8_uint8"] if ec.uint8_input else []), *nms] \
        if "openvino_int8" in asked else []
    return [*ort, *ov_float, *(["openvino_fp16"] if "openvino_fp16" in asked else []), *ov_int8]


@dataclass(frozen=True)
class QuantizeRun:
    """What every artifact builder of one quantize run reads."""

    cfg: PipelineConfig
    fp32: Path  # the exported FP32 ONNX
    calib: list[str]  # the calibration images, drawn once: every INT8 artifact calibrates on the same set
    input_size: tuple[int, int]
    float_ap: float  # ONNX Runtime FP32's AP in points, what the gate measures the drop from
    val: CocoDataset
    work: Path  # scratch folder of the run (the quant_pre_process'ed ONNX)
    measure: Callable[..., dict[str, Any]]  # (name, model file, extra fields) -> its row, predictions written


def exported_metrics(cfg: PipelineConfig) -> dict[str, Any]:
    """The export stage's metrics.json, once every input file is there and the IR folder writable: a
    missing input is one line before any INT8 work, not after it."""
    fp32, export_json = paths.onnx_model(cfg), paths.metrics_file(cfg, "export")
    if not fp32.is_file() or not export_json.is_file():
        raise InputError(f"{fp32} or its metrics.json missing: run `make export` first")
    if cfg.export.nms == "graph" and not paths.graph_nms_onnx(cfg).is_file():
        raise InputError(f"{paths.graph_nms_onnx(cfg)} missing (export.nms: graph): run `make export` with it first")
    check_writable(paths.openvino_dir(cfg))
    exported = exported_reference(cfg)
    if "input_size" not in exported:
        raise InputError(f"{export_json}: without the model's input_size: rerun `make export`")
    return exported


def artifact_measurer(cfg: PipelineConfig, out_dir: Path, exported: dict[str, Any], val: CocoDataset,
                      input_size: tuple[int, int]) -> Callable[..., dict[str, Any]]:
    """measure(name, model file, extra fields) -> the artifact's row: AP on val, latency, its change against
    the export stage's PyTorch and ONNX Runtime FP32; writes predictions_<name>.json and prints one line."""
    qc, ec = cfg.quantize, cfg.export
    decoded = sample_images(val, 8)
    threads = ec.threads or None
    options = {"openvino": {"threads": threads, "hint": qc.openvino_hint, "cache_dir": qc.openvino_cache_dir},
               "onnxruntime": {"threads": threads}}
    inference = openvino_inference(qc)
    step = step_printer("quantize", planned_artifacts(cfg))

    def measure(name: str, path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        step(name)
        if path.suffix == ".xml":
            runner = open_runner(str(path), **options["openvino"], inference_precision=inference[name])
        else:
            runner = open_runner(str(path), **options["onnxruntime"])
        metrics, results = measure_artifact(runner, val, input_size, ec.warmup, ec.iters, decoded)
        metrics.update(extra or {}, delta_AP_vs_pytorch=metrics["AP"] - measurement(exported, "pytorch")["AP"],
                       delta_AP_vs_fp32=metrics["AP"] - measurement(exported, "onnxruntime_fp32")["AP"],
                       inference_precision=inference.get(name))
        write_json(out_dir / f"predictions_{name}.json", results)
        print(f"[quantize] {name}: AP {100 * metrics['AP']:.2f} ({100 * metrics['delta_AP_vs_fp32']:+.2f} vs FP32), "
              f"infer p50 {metrics['latency_ms']['infer']['p50']:.2f} ms", flush=True)
        return metrics

    return measure


def over_gate(q: QuantizeRun, row: dict[str, Any]) -> bool:
    """Whether an INT8 row lost more than quantize.max_map_drop and the accuracy-aware search is on."""
    qc = q.cfg.quantize
    return q.float_ap - 100 * row["AP"] > qc.max_map_drop and qc.accuracy_aware


def prepared_onnx(q: QuantizeRun) -> Path:
    """The FP32 ONNX after ONNX Runtime's quant_pre_process, made once for every ONNX Runtime INT8 artifact."""
    from export.onnxruntime_int8 import preprocess_for_quantization  # onnx: not for `edgekd quantize --help`

    path = q.work / "prepared.onnx"
    return path if path.is_file() else preprocess_for_quantization(q.fp32, path)


def onnxruntime_qdq(q: QuantizeRun, name: str, out: Path, symmetric: bool, tensorrt: bool = False) -> dict[str, Any]:
    """A QDQ ONNX measured, then searched back under the gate (float layers) when over it; the TensorRT form
    is checked against what TensorRT's parser takes each time it is written."""
    from export.onnxruntime_int8 import onnxruntime_accuracy_aware, quantize_onnxruntime

    qc = q.cfg.quantize
    prepared = prepared_onnx(q)
    model = quantize_onnxruntime(prepared, out, q.calib, q.input_size, method=qc.calibration, symmetric=symmetric,
                                 tensorrt=tensorrt)
    if tensorrt:
        check_tensorrt_qdq(model)
    row = q.measure(name, model)
    if over_gate(q, row):
        row = q.measure(name, model, onnxruntime_accuracy_aware(
            prepared, model, q.calib, q.input_size, lambda path: _file_ap(path, q.val, q.input_size), q.float_ap,
            qc.max_map_drop, qc.max_float_layers, qc.calibration, symmetric, tensorrt))
        if tensorrt:
            check_tensorrt_qdq(model)
    return row


def build_onnxruntime_int8(q: QuantizeRun) -> dict[str, Any]:
    """model.int8.onnx: activations as quantize.symmetric_activations says (uint8 by default)."""
    return onnxruntime_qdq(q, "onnxruntime_int8", paths.onnxruntime_int8(q.cfg), q.cfg.quantize.symmetric_activations)


def build_onnxruntime_int8_cpu(q: QuantizeRun) -> dict[str, Any]:
    """model.int8.cpu.onnx: always uint8 activations (ONNX Runtime's fast x86 path), never searched."""
    from export.onnxruntime_int8 import quantize_onnxruntime

    model = quantize_onnxruntime(prepared_onnx(q), paths.onnxruntime_int8(q.cfg, cpu=True), q.calib, q.input_size,
                                 method=q.cfg.quantize.calibration, symmetric=False)
    return q.measure("onnxruntime_int8_cpu", model)


def build_onnxruntime_int8_trt(q: QuantizeRun) -> dict[str, Any]:
    """model.int8.trt.onnx, what make export-trt PRECISION=int8 builds from, measured in ONNX Runtime."""
    return onnxruntime_qdq(q, "onnxruntime_int8_trt", paths.tensorrt_int8_onnx(q.cfg), symmetric=True, tensorrt=True)


def build_openvino_fp32(q: QuantizeRun) -> dict[str, Any]:
    return q.measure("openvino_fp32", openvino_ir(q.fp32, paths.openvino_ir(q.cfg, "fp32")))


def build_openvino_bf16(q: QuantizeRun) -> dict[str, Any]:
    """The FP32 IR compiled for bf16 arithmetic: no file of its own."""
    return q.measure("openvino_bf16", paths.openvino_ir(q.cfg, "fp32"))


def build_openvino_fp16(q: QuantizeRun) -> dict[str, Any]:
    return q.measure("openvino_fp16", openvino_ir(q.fp32, paths.openvino_ir(q.cfg, "fp16"), fp16=True))


def build_openvino_int8(q: QuantizeRun) -> dict[str, Any]:
    """NNCF INT8; over the gate, NNCF's accuracy control rewrites it (its validation hands a compiled model)."""
    int8_xml = paths.openvino_ir(q.cfg, "int8")
    row = q.measure("openvino_int8", quantize_openvino(q.fp32, int8_xml, q.calib, q.input_size))
    if over_gate(q, row):
        val, input_size = q.val, q.input_size
        control = AccuracyControl(
            val.images, lambda info: model_input(val.image_path(info), input_size),
            lambda compiled, items: _compiled_ap(compiled, replace(val, images=items), input_size),
            q.cfg.quantize.max_map_drop)
        searched = openvino_accuracy_aware(q.fp32, int8_xml, q.calib, input_size, control)
        row = q.measure("openvino_int8", int8_xml, searched)
    return row


def build_openvino_int8_uint8(q: QuantizeRun) -> dict[str, Any]:
    """The INT8 IR taking the letterboxed uint8 image (PrePostProcessor), export.uint8_input."""
    xml = openvino_uint8_input(paths.openvino_ir(q.cfg, "int8"), paths.openvino_ir(q.cfg, "int8.uint8"))
    return q.measure("openvino_int8_uint8", xml)


def build_openvino_int8_nms(q: QuantizeRun) -> dict[str, Any]:
    """The INT8 IR with NMS in the graph (export.nms: graph): the host only letterboxes and rescales."""
    ec, out = q.cfg.export, paths.openvino_ir(q.cfg, "int8.nms")
    # NMS appended to the INT8 IR reuses its calibration; a static batch-N IR cannot become batch 1,
    # so model.nms.onnx is quantized again then.
    xml = (openvino_nms_ir(paths.openvino_ir(q.cfg, "int8"), out) if ec.batch == 1 or ec.dynamic_batch
           else quantize_openvino(paths.graph_nms_onnx(q.cfg), out, q.calib, q.input_size))
    return q.measure("openvino_int8_nms", xml)


def build_openvino_int8_uint8_nms(q: QuantizeRun) -> dict[str, Any]:
    xml = openvino_uint8_input(paths.openvino_ir(q.cfg, "int8.nms"), paths.openvino_ir(q.cfg, "int8.uint8.nms"))
    return q.measure("openvino_int8_uint8_nms", xml)


# Every artifact the stage can build, with its builder; planned_artifacts picks which, in this order (a
# later builder reads an earlier one's file: bf16 the FP32 IR, the uint8 and NMS IRs the INT8 one).
BUILDERS: dict[str, Callable[[QuantizeRun], dict[str, Any]]] = {
    "onnxruntime_int8": build_onnxruntime_int8,
    "onnxruntime_int8_cpu": build_onnxruntime_int8_cpu,
    "onnxruntime_int8_trt": build_onnxruntime_int8_trt,
    "openvino_fp32": build_openvino_fp32,
    "openvino_bf16": build_openvino_bf16,
    "openvino_fp16": build_openvino_fp16,
    "openvino_int8": build_openvino_int8,
    "openvino_int8_uint8": build_openvino_int8_uint8,
    "openvino_int8_nms": build_openvino_int8_nms,
    "openvino_int8_uint8_nms": build_openvino_int8_uint8_nms,
}
# The runner refuses a CPU without BF16, and a compile a capped ISA (ONEDNN_MAX_CPU_ISA) cannot do: that
# artifact is listed as skipped with the reason instead of failing the stage.
SKIPPABLE = ("openvino_bf16",)


def run_quantize(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Build and measure the configured artifacts, write metrics.json and table.md; an INT8 artifact over
    quantize.max_map_drop is first searched back under it (quantize.accuracy_aware)."""
    qc = cfg.quantize
    exported = exported_metrics(cfg)
    input_size = tuple(exported["input_size"])
    fp32_ap = measurement(exported, "onnxruntime_fp32")["AP"]
    train, val = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    calib = calibration_paths(train, qc.calib_images, qc.seed)
    measure = artifact_measurer(cfg, out_dir, exported, val, input_size)
    rows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as work:
        q = QuantizeRun(cfg, paths.onnx_model(cfg), calib, input_size, 100 * fp32_ap, val,
                        Path(work), measure)
        for name in planned_artifacts(cfg):
            try:
                rows[name] = BUILDERS[name](q)
            except InputError as e:
                if name not in SKIPPABLE:
                    raise
                skipped[name] = str(e)
                print(f"[quantize] {name} skipped: {e}", flush=True)
    return write_results(q, out_dir, exported, rows, skipped)


def write_results(q: QuantizeRun, out_dir: Path, exported: dict[str, Any], rows: dict[str, dict[str, Any]],
                  skipped: dict[str, str]) -> dict[str, Any]:
    """metrics.json and table.md: every artifact beside the export stage's PyTorch and ONNX Runtime FP32."""
    qc, ec = q.cfg.quantize, q.cfg.export
    pytorch, fp32 = measurement(exported, "pytorch"), measurement(exported, "onnxruntime_fp32")
    table = format_table({"pytorch": pytorch, "onnxruntime_fp32": fp32, **rows}, pytorch["AP"])
    reference = {"pytorch": {"AP": pytorch["AP"]}, "onnxruntime_fp32": {"AP": fp32["AP"]}}
    result = metrics_file.write(out_dir, rows, reference, skipped=skipped,
                                calibration={"images": len(q.calib), "method": qc.calibration, "seed": qc.seed},
                                gate={"max_map_drop": qc.max_map_drop})
    write_text(out_dir / "table.md", f"AP on {len(q.val.images)} val images (percent); latency at batch "
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
