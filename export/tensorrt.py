"""ONNX -> serialized TensorRT engine with the TensorRT Python API (8.5/8.6 as on JetPack 5 / 6.0,
and 10.x as on JetPack 6.1+ and desktops). `make export-trt PRECISION=fp16|int8` runs it.

INT8 is explicit quantization from the QDQ ONNX of the quantize stage (the only INT8 path newer
TensorRT keeps). Implicit calibration with IInt8EntropyCalibrator2 over our calibration images is a
fallback for an ONNX without Q/DQ nodes, on versions that still have it. Beside each engine a JSON
records TensorRT version, GPU, compute capability, precision, shapes and the ONNX hash; the runner
refuses an engine built by another TensorRT or on another GPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import InputError
from deploy.files import atomic_path, check_writable, sha256_file, write_json
from deploy.runtimes.tensorrt import engine_meta_path, parse_version

SUPPORTED = ((8, 5), (11, 0))  # [8.5, 11.0)
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class EngineConfig:
    precision: str = "fp16"  # fp32 | fp16 | int8
    workspace_mb: int = 2048  # builder scratch memory limit
    max_batch: int = 1  # dynamic-batch ONNX: the profile spans 1..max_batch (opt = max_batch)
    dla_core: int | None = None  # Jetson DLA core; layers DLA cannot run fall back to the GPU
    timing_cache: str | None = None  # persisted tactic timings: rebuilds take seconds, not minutes
    calibration_cache: str | None = None  # implicit INT8 only


def check_version(version: str) -> tuple[int, int]:
    """(major, minor) of a supported TensorRT, else an InputError that says which are."""
    major, minor = parse_version(version)
    if not SUPPORTED[0] <= (major, minor) < SUPPORTED[1]:
        raise InputError(f"TensorRT {version} is not supported: edgekd builds engines with TensorRT 8.5 to 10.x "
                         "(JetPack 5.1+, or the tensorrt wheel 10.x)")
    return major, minor


def has_qdq(onnx_path: str | Path) -> bool:
    """Whether the ONNX carries explicit quantization (QuantizeLinear / DequantizeLinear nodes)."""
    import onnx

    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


EXPLICIT, IMPLICIT = "explicit (QDQ)", "implicit (entropy calibration)"


@dataclass(frozen=True)
class PrecisionPlan:
    flags: tuple[str, ...]  # trt.BuilderFlag names to set
    quantization: str  # EXPLICIT, IMPLICIT or "none"


def precision_plan(precision: str, explicit: bool, version: str, has_entropy_calibrator: bool,
                   has_calibration: bool, source: str) -> PrecisionPlan:
    """Which builder flags and which INT8 path an engine of `precision` takes, from the ONNX (Q/DQ or not) and
    the TensorRT version; one line naming the file when the combination cannot build. No GPU needed."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision}: valid precisions are {', '.join(PRECISIONS)}")
    if precision != "int8":
        if explicit:
            raise InputError(f"{source} is quantized (Q/DQ nodes): build it with precision int8")
        return PrecisionPlan(("FP16",) if precision == "fp16" else (), "none")
    flags = ("FP16", "INT8")  # int8: the layers left in float run in fp16
    if explicit:
        return PrecisionPlan(flags, EXPLICIT)
    # Implicit calibration is deprecated from 10.1 and gone from 11; from 10 on, INT8 comes from Q/DQ only.
    if not has_entropy_calibrator or parse_version(version)[0] >= 10:
        raise InputError(f"{source} has no Q/DQ nodes and TensorRT {version} needs explicit "
                         "quantization: build from the quantize stage's model.int8.onnx")
    if not has_calibration:
        raise InputError("implicit INT8 calibration needs calibration images")
    return PrecisionPlan(flags, IMPLICIT)


def make_calibrator(trt: Any, batches: Sequence[np.ndarray], cache_path: str | None):
    """An IInt8EntropyCalibrator2 over preprocessed [1, 3, H, W] batches (implicit INT8 only)."""
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


def build_engine(onnx_path: str | Path, out: str | Path, cfg: EngineConfig,
                 calibration: Sequence[np.ndarray] | None = None) -> Path:
    """Build and serialize an engine (atomically), and write its JSON beside it."""
    try:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as e:
        raise InputError(f"TensorRT engines need tensorrt and pycuda ({e}); on a Jetson they come with JetPack, "
                         "elsewhere `pip install -e .[tensorrt]`") from None
    major, _ = check_version(trt.__version__)
    out = Path(out)
    check_writable(out.parent)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Networks are always explicit-batch on 10.x; on 8.x the flag asks for it.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path}: TensorRT's ONNX parser refused it: {errors[:400]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    cache_bytes = Path(cfg.timing_cache).read_bytes() if cfg.timing_cache and os.path.isfile(cfg.timing_cache) else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    plan = precision_plan(cfg.precision, has_qdq(onnx_path), trt.__version__,
                          hasattr(trt, "IInt8EntropyCalibrator2"), bool(calibration), str(onnx_path))
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.quantization == IMPLICIT:
        config.int8_calibrator = make_calibrator(trt, calibration, cfg.calibration_cache)

    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if shape[0] == -1:  # dynamic batch: one profile 1..max_batch
        profile = builder.create_optimization_profile()
        fixed = shape[1:]
        profile.set_shape(inp.name, (1, *fixed), (cfg.max_batch, *fixed), (cfg.max_batch, *fixed))
        config.add_optimization_profile(profile)
    if cfg.dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise InputError(f"dla_core={cfg.dla_core}: this device has no DLA")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

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
        "inputs": {inp.name: list(shape)}, "outputs": {o.name: list(o.shape) for o in outputs},
        "max_batch": cfg.max_batch, "dla_core": cfg.dla_core, "onnx": str(onnx_path),
        "onnx_sha256": sha256_file(onnx_path), "workspace_mb": cfg.workspace_mb,
    })
    return out


def engine_summary(path: str | Path) -> dict[str, Any]:
    """The JSON beside an engine."""
    return json.loads(engine_meta_path(path).read_text())
