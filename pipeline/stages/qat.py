"""The qat stage: quantization-aware fine-tuning of the distilled student, healed by its teacher, exported
as the symmetric Q/DQ ONNX that TensorRT builds as explicit INT8 (distill/qat.py says how).

    python -m pipeline.stages.qat --config configs/pipelines/default.yaml [qat.distill.method=none] [key=value ...]

The student's BatchNorms are folded, fake quantizers go on every convolution (int8: per-channel weights,
per-tensor activations, all symmetric), their scales are calibrated on qat.calib_images training images,
and the student fine-tunes on qat.train's schedule with its own losses plus qat.distill's terms from the
teacher (BCKD by default; `none` for the task losses alone). Writes runs/<run>/qat/: last.pt, best.pt,
log.jsonl, model.qat.onnx (checked: TensorRT's Q/DQ form, every convolution quantized, no Q/DQ in the
decode), model_int8.xml/.bin (OpenVINO's INT8 IR of the same file), predictions_<artifact>.json and
metrics.json, both artifacts measured by the deploy/ evaluator against the FP32 ONNX.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy import metrics_file
from deploy.errors import InputError
from deploy.files import write_json
from deploy.measure import measure_artifact, sample_images
from deploy.preprocess import preprocess_batch
from deploy.qdq_check import QDQ, check_tensorrt_qdq, unquantized_convolutions
from deploy.runtimes import open_runner
from distill.settings import QatConfig
from export.calibration import calibration_batches, calibration_paths
from export.openvino_int8 import openvino_ir
from pipeline import paths
from pipeline.artifacts import exported_reference
from pipeline.cli import common_arguments, guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.gates import check_gate
from pipeline.run_lock import run_lock
from pipeline.stages.data import load_split, monitor_split

if TYPE_CHECKING:  # torch, onnx and ModelOpt load when the stage runs, not for `edgekd qat --help`
    import torch

ARTIFACTS = ("qat_onnxruntime", "qat_openvino")


def quantize_student(student: torch.nn.Module, qc: QatConfig, train_set, resume_from: Path | None) -> torch.nn.Module:
    """The student with BatchNorms folded and fake quantizers in (in place). Scales come from
    `resume_from` when it exists (a resumed run), else from calibration on training images."""
    import torch

    from distill.checkpoint import load_checkpoint
    from distill.qat import calibration_loop, fold_batchnorm, insert_quantizers, restore_scales

    input_size = tuple(student.cfg.input_size)
    fold_batchnorm(student, input_size)
    if resume_from is not None and resume_from.is_file():
        insert_quantizers(student, None)
        restore_scales(student, load_checkpoint(resume_from)["model"])
    else:
        images = calibration_paths(train_set, qc.calib_images, qc.train.seed)
        print(f"[qat] calibrating the activation scales on {len(images)} training images", flush=True)
        insert_quantizers(student, calibration_loop(torch.from_numpy(x)
                                                    for x in calibration_batches(images, input_size)))
    return student


def check_qat_onnx(path: Path) -> None:
    """TensorRT's Q/DQ form, every convolution quantized, the decode in float: else one InputError."""
    import onnx

    from export.onnxruntime_int8 import onnx_decode_nodes

    check_tensorrt_qdq(path)
    model = onnx.load(str(path))
    float_convs = unquantized_convolutions(model)
    if float_convs:
        raise InputError(f"{path}: {len(float_convs)} convolutions run in float "
                         f"(first: {float_convs[0]}); QAT quantizes all")
    by_name = {n.name or f"#{i}": n for i, n in enumerate(model.graph.node)}
    in_decode = [name for name in onnx_decode_nodes(model) if by_name[name].op_type in QDQ]
    if in_decode:
        raise InputError(f"{path}: the decode holds {len(in_decode)} Q/DQ "
                         f"nodes (first: {in_decode[0]}); it must stay float")


def run_qat(cfg: PipelineConfig, out_dir: Path, progress: bool = True, fine_tune: bool = True) -> dict[str, Any]:
    """Calibrate, fine-tune, export and measure; return metrics.json's content (the gate,
    qat.max_map_drop, is checked from it by pipeline.gates). Without fine_tune: calibration alone
    (ModelOpt's post-training quantization, the QAT ablation's starting point)."""
    import torch

    from distill.distiller import Distiller, check_pair
    from distill.models.detector import load_detector
    from distill.teachers import load_teacher
    from distill.trainer import setup_distributed, total_steps_for, train
    from export.onnx import export_onnx, parity

    qc, ec = cfg.qat, cfg.export
    source, export_json = paths.export_source(cfg), paths.metrics_file(cfg, "export")
    if not source.is_file():
        raise InputError(f"no distilled student to start QAT from: {source} not "
                         "found (run `make distill`, or set export.checkpoint)")
    if not export_json.is_file():
        raise InputError(f"{export_json} missing: run `make export` first (QAT is measured against the FP32 ONNX)")
    exported = exported_reference(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = setup_distributed(qc.train.device)
    if info.world > 1:
        raise InputError("qat: runs in one process (ModelOpt's calibrated scales are not synchronised here)")
    train_set, val_set = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    images_used = min(len(train_set.images), qc.train.max_train_images or len(train_set.images))
    steps = total_steps_for(qc.train, images_used // qc.train.batch_size)
    if steps == 0:  # the config check refuses epochs 0; this catches a batch larger than the images
        raise InputError(f"qat.train: a schedule of zero steps ({qc.train.epochs} epochs of {images_used} images at "
                         f"batch {qc.train.batch_size}); QAT needs at least one")
    teacher, teacher_info = load_teacher(cfg, train_set.class_names)
    student, classes, state = load_detector(source)
    if classes != train_set.class_names:
        raise InputError(f"{source}: its classes {classes[:3]}... differ from the dataset's "
                         f"{train_set.class_names[:3]}...")
    input_size = tuple(student.cfg.input_size)
    check_pair(teacher, student, teacher_info.classes, classes, input_size, teacher_info.source,
               tuple(teacher.cfg.input_size))
    quantize_student(student, qc, train_set, out_dir / "last.pt" if fine_tune else None)
    distiller = Distiller(teacher, student.cfg, qc.distill, info.device, qc.train.channels_last)
    extra = {"config": state["config"], "classes": classes, "qat": asdict(qc), "source": str(source),
             "teacher": teacher_info.source}
    trained = (train(student, distiller, qc.train, train_set, val_set, out_dir, input_size, extra,
                     resume=True, progress=progress, dist_info=info,
                     monitor_set=monitor_split(cfg.data, qc.train, "qat")) if fine_tune else {})
    student = student.cpu().to(memory_format=torch.contiguous_format).eval()

    onnx_path = export_onnx(student, classes, out_dir / paths.qat_onnx(cfg).name, input_size, ec.opset, ec.batch,
                            ec.dynamic_batch, ec.slim, source=str(out_dir / "last.pt" if fine_tune else source))
    check_qat_onnx(onnx_path)
    images, _ = preprocess_batch([val_set.image_path(i) for i in val_set.images[: max(ec.batch, 8)]], input_size)
    diff = parity(student, onnx_path, images, ec.batch)
    print(f"[qat] fake-quantized PyTorch vs ONNX Runtime on {len(images)} val images: "
          f"scores {diff['scores_max_abs']:.2e}, boxes {diff['boxes_max_abs']:.2e} px "
          "(int8 rounding ties and accumulation order)", flush=True)
    xml = openvino_ir(onnx_path, out_dir / paths.qat_openvino(cfg).name)

    fp32_ap, pytorch_ap = (metrics_file.measurement(exported, n)["AP"] for n in ("onnxruntime_fp32", "pytorch"))
    decoded, rows = sample_images(val_set, 8), {}
    threads = ec.threads or None
    for name, runner in (("qat_onnxruntime", open_runner(str(onnx_path), threads=threads)),
                         ("qat_openvino", open_runner(str(xml), threads=threads))):
        metrics, results = measure_artifact(runner, val_set, input_size, ec.warmup, ec.iters, decoded)
        metrics.update(delta_AP_vs_fp32=metrics["AP"] - fp32_ap,
                       delta_AP_vs_pytorch=metrics["AP"] - pytorch_ap)
        write_json(out_dir / f"predictions_{name}.json", results)
        rows[name] = metrics
        print(f"[qat] {name}: AP {100 * metrics['AP']:.2f} ({100 * metrics['delta_AP_vs_fp32']:+.2f} vs FP32 ONNX "
              f"{100 * fp32_ap:.2f}), infer p50 {metrics['latency_ms']['infer']['p50']:.2f} ms", flush=True)
    return metrics_file.write(out_dir, rows, {"onnxruntime_fp32": {"AP": fp32_ap}, "pytorch": {"AP": pytorch_ap}},
                              pytorch_fake_quant={k: trained[k] for k in ("AP", "AP50", "AP75") if k in trained},
                              parity=diff, method=qc.distill.method if fine_tune else None,
                              steps=steps if fine_tune else 0, calibration_images=qc.calib_images,
                              gate={"max_map_drop": qc.max_map_drop})


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(argparse.ArgumentParser(prog="edgekd qat", description=__doc__.split("\n")[0]))
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        with run_lock(cfg.run_dir, "edgekd qat"):
            run_qat(cfg, paths.stage_dir(cfg, "qat"), progress=not args.no_progress and sys.stderr.isatty())
            print(f"[qat] gate passed: {check_gate('qat', cfg)}")

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
