#!/usr/bin/env python3
"""Build a TensorRT engine from an edgekd ONNX, on the device that will run it (an engine is tied to
its TensorRT release and GPU). Runs from the copied deploy/ folder alone: Python 3.8, no torch, with
the tensorrt Python package JetPack installs, pycuda, and onnx for the Q/DQ check.

    python3 deploy/build_engine.py model.onnx --precision fp16
    python3 deploy/build_engine.py model.int8.trt.onnx --precision int8 [--dla-core 0] [--out m.engine]

TensorRT 8.5 to 10.x (JetPack 5.1: 8.5; JetPack 6.0: 8.6; JetPack 6.1+: 10.3; desktop wheels 10.x).
INT8 is explicit quantization from the quantize stage's Q/DQ file, checked against what TensorRT's
parser takes (deploy/qdq_check.py) before parsing. Implicit calibration (IInt8EntropyCalibrator2, on the
images of --calib-dir) is a fallback for an ONNX without Q/DQ nodes on 8.x, which still has it. Beside
the engine a JSON records TensorRT version, GPU, compute capability, precision, shapes and the ONNX hash;
the runner refuses an engine built by another TensorRT or on another GPU. `make export-trt` calls
build_engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the `deploy` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from deploy.errors import DeviceError, InputError, report  # noqa: E402
from deploy.files import atomic_path, check_writable, sha256_file, write_json  # noqa: E402
from deploy.postprocess import IOU_THRESHOLD, MAX_DETECTIONS, SCORE_THRESHOLD  # noqa: E402
from deploy.qdq_check import check_tensorrt_qdq  # noqa: E402
from deploy.runtimes.tensorrt import (  # noqa: E402
    ENGINE_NMS_OUTPUTS,
    check_version,
    engine_meta_path,
    import_tensorrt,
    parse_version,
)

PRECISIONS = ("fp32", "fp16", "int8")
EXPLICIT, IMPLICIT = "explicit (QDQ)", "implicit (entropy calibration)"


@dataclass
class EngineConfig:
    precision: str = "fp16"  # fp32 | fp16 | int8
    workspace_mb: int = 2048  # builder scratch memory limit
    max_batch: int = 1  # dynamic-batch ONNX: the profile spans 1..max_batch (opt = max_batch)
    dla_core: int | None = None  # Jetson DLA core; layers DLA cannot run fall back to the GPU
    timing_cache: str | None = None  # persisted tactic timings: rebuilds take seconds, not minutes
    calibration_cache: str | None = None  # implicit INT8 only
    # NMS in the engine: EfficientNMS_TRT appended to the boxes/scores outputs, with host NMS's settings
    # (deploy/postprocess.py); the engine then outputs num_detections and the kept boxes, scores, classes.
    nms: bool = False


@dataclass(frozen=True)
class PrecisionPlan:
    flags: tuple[str, ...]  # trt.BuilderFlag names to set
    quantization: str  # EXPLICIT, IMPLICIT or "none"


@dataclass(frozen=True)
class BuildPlan:
    """Everything the builder decides before it touches a GPU (build_plan)."""

    network_flags: tuple[str, ...]  # trt.NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # trt.BuilderFlag names
    quantization: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None  # min, opt, max of the input
    dla_core: int | None
    nms_fields: tuple[tuple[str, str, float], ...] = ()  # EfficientNMS_TRT's (name, FLOAT32 | INT32, value)


def network_flags(version: str) -> tuple[str, ...]:
    """trt.NetworkDefinitionCreationFlag names: 10.x networks are always explicit batch (the flag is
    deprecated there); 8.x needs EXPLICIT_BATCH to parse ONNX."""
    return () if parse_version(version)[0] >= 10 else ("EXPLICIT_BATCH",)


def has_qdq(onnx_path: str | Path) -> bool:
    """Whether the ONNX carries explicit quantization (QuantizeLinear / DequantizeLinear nodes)."""
    try:
        import onnx
    except ImportError as exc:
        raise InputError(f"{onnx_path}: reading the model needs the onnx package (pip install onnx)") from exc
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def precision_plan(precision: str, explicit: bool, version: str, has_entropy_calibrator: bool,
                   has_calibration: bool, source: str) -> PrecisionPlan:
    """Which builder flags and which INT8 path an engine of `precision` takes, from the ONNX (Q/DQ or not) and
    the TensorRT version; one line naming the file when the combination cannot build."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision}: valid precisions are {', '.join(PRECISIONS)}")
    if precision != "int8":
        if explicit:
            raise InputError(f"{source} is quantized (Q/DQ nodes): build it with precision int8")
        return PrecisionPlan(("FP16",) if precision == "fp16" else (), "none")
    # The INT8 flag on a weakly typed network with Q/DQ is what 8.x requires and 10.x still takes
    # (developer guide, "Explicit Quantization"); FP16 lets the layers left in float run in fp16.
    flags = ("FP16", "INT8")
    if explicit:
        return PrecisionPlan(flags, EXPLICIT)
    # Implicit calibration is deprecated from 10.1 and gone from 11; from 10 on, INT8 comes from Q/DQ only.
    if not has_entropy_calibrator or parse_version(version)[0] >= 10:
        raise InputError(f"{source} has no Q/DQ nodes and TensorRT {version} needs explicit "
                         "quantization: build from the quantize stage's model.int8.trt.onnx")
    if not has_calibration:
        raise InputError("implicit INT8 calibration needs calibration images (--calib-dir, a folder of them)")
    return PrecisionPlan(flags, IMPLICIT)


def build_plan(version: str, precision: str, explicit: bool, input_shape: Sequence[int], max_batch: int,
               dla_core: int | None, dla_cores: int, has_entropy_calibrator: bool, has_calibration: bool,
               source: str, nms: bool = False, outputs: Sequence[str] = ("boxes", "scores")) -> BuildPlan:
    """The builder's decisions from the TensorRT version, the ONNX (Q/DQ or not, input shape) and the
    device (DLA cores), with no GPU: one InputError naming the file or setting when it cannot build."""
    check_version(version)
    if nms and not {"boxes", "scores"} <= set(outputs):
        raise InputError(f"{source}: NMS in the engine goes after the outputs 'boxes' and 'scores'; this model has "
                         f"{', '.join(outputs)} (build from model.onnx, not model.nms.onnx)")
    plan = precision_plan(precision, explicit, version, has_entropy_calibrator, has_calibration, source)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or any(d <= 0 for d in shape[1:]):
        raise InputError(f"{source}: input shape {list(shape)}; edgekd engines "
                         "take [N, 3, H, W] with H and W fixed at export")
    if max_batch < 1:
        raise InputError(f"max_batch {max_batch}: must be at least 1")
    profile = None
    if shape[0] <= 0:  # dynamic batch: one optimization profile 1..max_batch, tuned for max_batch
        rest = shape[1:]
        profile = ((1, *rest), (max_batch, *rest), (max_batch, *rest))
    elif max_batch != 1 and max_batch != shape[0]:
        raise InputError(f"{source}: its batch is fixed at {shape[0]}; "
                         f"max_batch {max_batch} needs a dynamic-batch export")
    flags = plan.flags
    if dla_core is not None:
        if dla_cores == 0:
            raise InputError(f"dla_core {dla_core}: this device has no DLA")
        if not 0 <= dla_core < dla_cores:
            raise InputError(f"dla_core {dla_core}: this device has DLA cores 0 to {dla_cores - 1}")
        if precision == "fp32":  # DLA computes in fp16 or int8 only (developer guide, "Working with DLA")
            raise InputError("dla_core: DLA runs fp16 or int8 engines, not fp32")
        flags = (*flags, "GPU_FALLBACK")  # layers DLA cannot run go to the GPU instead of failing the build
    return BuildPlan(network_flags(version), flags, plan.quantization, profile, dla_core,
                     efficient_nms_fields() if nms else ())


def efficient_nms_fields() -> tuple[tuple[str, str, float], ...]:
    """EfficientNMS_TRT's plugin fields for host NMS's settings (TensorRT's plugin/efficientNMSPlugin
    README): corner boxes (box_coding 0), sigmoid scores already applied (score_activation 0), no
    background class, per-class NMS (class_agnostic 0)."""
    return (("score_threshold", "FLOAT32", SCORE_THRESHOLD), ("iou_threshold", "FLOAT32", IOU_THRESHOLD),
            ("max_output_boxes", "INT32", MAX_DETECTIONS), ("background_class", "INT32", -1),
            ("score_activation", "INT32", 0), ("class_agnostic", "INT32", 0), ("box_coding", "INT32", 0))


def make_calibrator(trt: Any, batches: Sequence[np.ndarray], cache_path: str | None):
    """An IInt8EntropyCalibrator2 over preprocessed [1, 3, H, W] batches (implicit INT8, TensorRT 8.x)."""
    import pycuda.driver as cuda

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches, self.index = list(batches), 0
            self.device = cuda.mem_alloc(self.batches[0].nbytes)

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names):
            if self.index >= len(self.batches):
                return None
            cuda.memcpy_htod(self.device, np.ascontiguousarray(self.batches[self.index], dtype=np.float32))
            self.index += 1
            return [int(self.device)]

        def read_calibration_cache(self):
            if cache_path and os.path.isfile(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache) -> None:
            if cache_path:
                with atomic_path(cache_path) as tmp:
                    tmp.write_bytes(bytes(cache))

    return Calibrator()


def add_efficient_nms(trt: Any, network: Any, logger: Any, fields: Sequence[tuple[str, str, float]]) -> None:
    """Replace the network's boxes/scores outputs by EfficientNMS_TRT's four (num_detections [N, 1],
    detection_boxes [N, K, 4], detection_scores [N, K], detection_classes [N, K])."""
    trt.init_libnvinfer_plugins(logger, "")
    creator = trt.get_plugin_registry().get_plugin_creator("EfficientNMS_TRT", "1", "")
    if creator is None:
        raise InputError("this TensorRT has no EfficientNMS_TRT plugin (libnvinfer_plugin); build without nms")
    dtypes = {"FLOAT32": (np.float32, trt.PluginFieldType.FLOAT32), "INT32": (np.int32, trt.PluginFieldType.INT32)}
    collection = trt.PluginFieldCollection([trt.PluginField(name, np.array([value], dtype=dtypes[kind][0]),
                                                            dtypes[kind][1])
                                            for name, kind, value in fields])
    plugin = creator.create_plugin("efficient_nms", collection)
    named = {network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)}
    boxes, scores = named["boxes"], named["scores"]
    network.unmark_output(boxes)
    network.unmark_output(scores)
    layer = network.add_plugin_v2([boxes, scores], plugin)
    for i, name in enumerate(ENGINE_NMS_OUTPUTS):
        layer.get_output(i).name = name
        network.mark_output(layer.get_output(i))


def parser_errors(parser: Any) -> str:
    """The ONNX parser's errors as one line: node index, operator where the version says it (10.x), text."""
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        node = error.node()
        operator = error.node_operator() if hasattr(error, "node_operator") else ""
        where = f"node {node}" + (f" ({operator})" if operator else "") if node >= 0 else "model"
        errors.append(f"{where}: {error.desc()}")
    return "; ".join(errors)


def build_engine(onnx_path: str | Path, out: str | Path, cfg: EngineConfig,
                 calibration: Sequence[np.ndarray] | None = None) -> Path:
    """Build and serialize an engine (atomically), and write its JSON beside it."""
    trt, cuda = import_tensorrt(f"{onnx_path}: building a TensorRT engine")
    out = Path(out)
    check_writable(out.parent)
    explicit = has_qdq(onnx_path)
    if explicit:  # before the parser, whose error for the wrong Q/DQ form names neither file nor fix
        check_tensorrt_qdq(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in network_flags(trt.__version__):
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        raise InputError(f"{onnx_path}: TensorRT's ONNX parser refused it: {parser_errors(parser)[:400]}")
    inp = network.get_input(0)
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    plan = build_plan(trt.__version__, cfg.precision, explicit, tuple(inp.shape), cfg.max_batch, cfg.dla_core,
                      builder.num_DLA_cores if cfg.dla_core is not None else 0,
                      hasattr(trt, "IInt8EntropyCalibrator2"), bool(calibration), str(onnx_path), cfg.nms, outputs)
    if plan.nms_fields:
        add_efficient_nms(trt, network, logger, plan.nms_fields)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    cache_bytes = Path(cfg.timing_cache).read_bytes() if cfg.timing_cache and os.path.isfile(cfg.timing_cache) else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.quantization == IMPLICIT:
        config.int8_calibrator = make_calibrator(trt, calibration, cfg.calibration_cache)
    if plan.profile is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, *plan.profile)
        config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cfg.timing_cache:
        with atomic_path(cfg.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    device = cuda.Device(0)
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    write_json(engine_meta_path(out), {
        "tensorrt": trt.__version__, "gpu": device.name(), "compute_capability": list(device.compute_capability()),
        "precision": cfg.precision, "quantization": plan.quantization,
        "inputs": {inp.name: list(inp.shape)}, "outputs": {o.name: list(o.shape) for o in outputs},
        "max_batch": cfg.max_batch, "dla_core": plan.dla_core, "nms": cfg.nms, "onnx": str(onnx_path),
        "onnx_sha256": sha256_file(onnx_path), "workspace_mb": cfg.workspace_mb,
    })
    return out


def engine_summary(path: str | Path) -> dict[str, Any]:
    """The JSON beside an engine."""
    return json.loads(engine_meta_path(path).read_text())


def calibration_inputs(image_dir: str, input_size: tuple[int, int], count: int) -> list[np.ndarray]:
    """Up to `count` images of a folder (sorted names), preprocessed as the model's input [1, 3, H, W]."""
    if not os.path.isdir(image_dir):
        raise InputError(f"--calib-dir {image_dir}: no such folder (give a folder of .jpg/.png images)")
    try:  # only here: a Jetson's system Python may lack Pillow, and no other build needs it
        from deploy.preprocess import load_image, preprocess
    except ImportError as e:
        if (e.name or "").split(".")[0] != "PIL":
            raise
        raise InputError(f"--calib-dir {image_dir}: reading images needs Pillow, which this Python lacks: "
                         "pip install pillow, or drop --calib-dir and build from the Q/DQ ONNX") from e
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")))
    if not names:
        raise InputError(f"--calib-dir {image_dir}: no .jpg/.png images there")
    return [preprocess(load_image(os.path.join(image_dir, n)), input_size)[0][None] for n in names[:count]]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --calib-images, the old spelling of --calib-dir, is still taken, with a warning."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("onnx", help="model.onnx (fp32/fp16) or the quantize stage's model.int8.trt.onnx (int8)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--out", help="engine path (default: model_<precision>.engine beside the ONNX)")
    parser.add_argument("--max-batch", type=int, default=1, help="dynamic-batch ONNX: the profile spans 1..N")
    parser.add_argument("--dla-core", type=int, help="Jetson DLA core (layers DLA cannot run fall back to the GPU)")
    parser.add_argument("--workspace-mb", type=int, default=2048)
    parser.add_argument("--timing-cache", help="tactic timings kept between builds "
                                               "(default: timing.cache beside the engine)")
    parser.add_argument("--nms", action="store_true", help="NMS in the engine (EfficientNMS_TRT, host NMS's settings)")
    parser.add_argument("--calib-dir", help="implicit INT8 (TensorRT 8.x, ONNX without Q/DQ): a folder of images")
    # Its own destination, so that the spelling used is known (argparse also expands a prefix of it).
    parser.add_argument("--calib-images", dest="calib_images", help=argparse.SUPPRESS)
    parser.add_argument("--calib-count", type=int, default=300, help="calibration images read from --calib-dir")
    args = parser.parse_args(argv)
    if args.calib_images is not None:
        if args.calib_dir is not None:
            parser.error("--calib-images is the old spelling of --calib-dir: give only --calib-dir")
        # The pipeline's calib_images settings are a count; this option always named a folder.
        print("warning: --calib-images is deprecated, use --calib-dir (a folder of images)", file=sys.stderr)
        args.calib_dir = args.calib_images
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        onnx_path = Path(args.onnx)
        if onnx_path.is_dir():
            raise InputError(f"{onnx_path}: is a directory; give the .onnx file (model.onnx or model.int8.trt.onnx)")
        if not onnx_path.is_file():
            raise InputError(f"{onnx_path}: no such file")
        out = Path(args.out) if args.out else onnx_path.with_name(f"model_{args.precision}.engine")
        calibration = None
        if args.calib_dir:
            import onnx

            dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
            calibration = calibration_inputs(args.calib_dir, (dims[2].dim_value, dims[3].dim_value), args.calib_count)
        engine = build_engine(onnx_path, out, EngineConfig(
            precision=args.precision, workspace_mb=args.workspace_mb, max_batch=args.max_batch, dla_core=args.dla_core,
            timing_cache=args.timing_cache or str(out.parent / "timing.cache"), nms=args.nms), calibration)
    except (InputError, DeviceError) as e:
        return report(e)
    meta = engine_summary(engine)
    print(f"{engine}: TensorRT {meta['tensorrt']}, {meta['gpu']}, {meta['precision']} ({meta['quantization']}), "
          f"inputs {meta['inputs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
