"""What the teacher adds to quantization-aware training (a benchmark, not a test): the same student,
calibration, schedule and seed fine-tuned with the task losses alone, with BCKD and with softmax KD,
beside calibration alone (no fine-tuning) and the run's post-training quantization.

    python -m pipeline.tools.qat_ablation --config configs/pipelines/default.yaml \\
        [--methods calibrated,none,bckd,kd] [key=value ...]

Each variant is a qat stage folder, runs/<run>/qat-ablation/<variant>/ (finished ones are reused: the
trainer finds them trained); runs/<run>/qat-ablation/qat-ablation.{md,json} hold the table: AP of the
fake-quantized PyTorch model, of the Q/DQ file in ONNX Runtime and of its OpenVINO INT8 IR, each against
the FP32 ONNX.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from deploy.errors import InputError
from deploy.files import write_json, write_text
from deploy.tables import markdown_table
from distill.settings import METHODS
from pipeline import paths
from pipeline.artifacts import stage_metrics
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config

CALIBRATED = "calibrated"  # calibration alone, no fine-tuning
DEFAULT_METHODS = (CALIBRATED, "none", "bckd", "kd")


def _points(value: float | None, sign: bool = False) -> str:
    return "-" if value is None else f"{100 * value:{'+' if sign else ''}.2f}"


def ablation_table(rows: dict[str, dict[str, Any]], fp32_ap: float, ptq: dict[str, Any]) -> str:
    """One row per variant (and the run's PTQ files when the quantize stage ran)."""
    cells = [["FP32 ONNX (reference)", "-", "-", "-", _points(fp32_ap), "-", "-", "-"]]
    for name in ("onnxruntime_int8_trt", "onnxruntime_int8", "openvino_int8"):
        if name in ptq:
            cells.append([f"PTQ {name}", "-", "-", "-", _points(ptq[name]["AP"]) if "onnxruntime" in name else "-",
                          _points(ptq[name]["AP"] - fp32_ap, True) if "onnxruntime" in name else "-",
                          _points(ptq[name]["AP"]) if "openvino" in name else "-",
                          _points(ptq[name]["AP"] - fp32_ap, True) if "openvino" in name else "-"])
    for name, m in rows.items():
        ort, ov = m["artifacts"]["qat_onnxruntime"], m["artifacts"]["qat_openvino"]
        cells.append([name, m["method"] or "-", str(m["steps"]), _points(m["pytorch_fake_quant"].get("AP")),
                      _points(ort["AP"]), _points(ort["AP"] - fp32_ap, True), _points(ov["AP"]),
                      _points(ov["AP"] - fp32_ap, True)])
    return markdown_table(["variant", "teacher terms", "steps", "PyTorch fake-quant AP", "ONNX Runtime AP", "Δ vs FP32",
                           "OpenVINO AP", "Δ vs FP32"], cells)


def run_qat_ablation(cfg: PipelineConfig, methods: list[str], progress: bool = True) -> dict[str, Any]:
    unknown = [m for m in methods if m != CALIBRATED and m not in METHODS]
    if unknown:
        raise InputError(f"--methods: unknown '{unknown[0]}'; valid: {CALIBRATED}, {', '.join(METHODS)}")
    from pipeline.stages.qat import run_qat  # torch: not for `edgekd qat-ablation --help`

    root = cfg.run_dir / "qat-ablation"
    rows = {}
    for name in methods:
        out = root / name
        print(f"[qat-ablation] {name}", flush=True)
        if name == CALIBRATED:
            rows[name] = run_qat(cfg, out, progress, fine_tune=False)
        else:
            variant = replace(cfg, qat=replace(cfg.qat, distill=replace(cfg.qat.distill, method=name)))
            rows[name] = run_qat(variant, out, progress)
    fp32_ap = next(iter(rows.values()))["reference"]["onnxruntime_fp32"]["AP"]
    ptq = stage_metrics(cfg, "quantize").get("artifacts", {})
    table = ablation_table(rows, fp32_ap, ptq)
    qc = cfg.qat
    header = (f"QAT ablation: {paths.export_source(cfg)}, {qc.calib_images} calibration images, "
              f"{qc.train.epochs} epoch(s) over {qc.train.max_train_images or 'all'} training "
              f"images at batch {qc.train.batch_size}, {qc.train.optimizer} lr {qc.train.lr:g} "
              f"({qc.train.schedule}), seed {qc.train.seed}. AP on the val images (percent).\n\n")
    write_text(root / "qat-ablation.md", header + table + "\n")
    write_json(root / "qat-ablation.json", {"variants": rows, "fp32_AP": fp32_ap,
                                            "ptq": {k: v["AP"] for k, v in ptq.items()}})
    print(table, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd qat-ablation", description=__doc__.split("\n")[0]))
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, of {CALIBRATED}, {', '.join(METHODS)}")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        run_qat_ablation(cfg, [m.strip() for m in args.methods.split(",") if m.strip()], progress=not args.no_progress)

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
