"""TensorRT: version and engine-provenance checks run everywhere; engine builds only where TensorRT,
pycuda and a GPU are (they skip elsewhere, saying why)."""

import numpy as np
import pytest

from deploy.errors import InputError
from deploy.preprocess import preprocess_batch
from deploy.runtimes import open_runner
from deploy.runtimes.tensorrt import available, check_engine_meta, parse_version
from export.quantize import calibration_paths, preprocess_for_quantization, quantize_onnxruntime
from export.tensorrt import EngineConfig, build_engine, check_version, precision_plan

TRT_MISSING = available()
needs_trt = pytest.mark.skipif(TRT_MISSING is not None, reason=f"TensorRT engine tests need TensorRT and a GPU: {TRT_MISSING}")


def test_supported_versions_are_8_5_to_10_x():
    assert check_version("8.5.2.2") == (8, 5) and check_version("8.6.1.post1") == (8, 6)
    assert check_version("10.3.0") == (10, 3)
    for old_or_new in ("8.4.3.1", "7.1.3", "11.0.0"):
        with pytest.raises(InputError, match=rf"TensorRT {old_or_new} is not supported: .*8.5 to 10.x"):
            check_version(old_or_new)
    with pytest.raises(InputError, match="cannot read a TensorRT version"):
        parse_version("trt")


def test_an_engine_from_another_tensorrt_or_gpu_is_refused_with_a_rebuild_hint():
    meta = {"tensorrt": "8.6.1", "gpu": "Orin"}
    check_engine_meta(meta, "m.engine", "8.6.1.post1", "Orin")
    with pytest.raises(InputError, match=r"m.engine was built with TensorRT 8.6.1, this device runs 10.3.0: rebuild it"):
        check_engine_meta(meta, "m.engine", "10.3.0", "Orin")
    with pytest.raises(InputError, match=r"built on Orin, this device is NVIDIA H100.*rebuild it on this device"):
        check_engine_meta(meta, "m.engine", "8.6.1", "NVIDIA H100")


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is installed here")
def test_without_tensorrt_building_is_one_clear_error(tiny_onnx, tmp_path):
    with pytest.raises(InputError, match="TensorRT engines need tensorrt and pycuda"):
        build_engine(tiny_onnx, tmp_path / "m.engine", EngineConfig(precision="fp16"))
    assert not (tmp_path / "m.engine").exists()


@pytest.fixture(scope="module")
def val_batch(tiny_splits):
    val = tiny_splits[1]
    return preprocess_batch([val.image_path(i) for i in val.images[:4]], (128, 128))[0]


def run_all(path, x, **options):
    runner = open_runner(str(path), **options)
    outs = [runner.infer(x[i : i + 1]) for i in range(len(x))]
    return runner, {k: np.concatenate([o[k] for o in outs]) for k in ("boxes", "scores")}


@needs_trt
@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision, score_atol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_float_engines_match_onnxruntime(tiny_onnx, tmp_path, val_batch, precision, score_atol):
    engine = build_engine(tiny_onnx, tmp_path / f"m_{precision}.engine",
                          EngineConfig(precision=precision, timing_cache=str(tmp_path / "timing.cache")))
    runner, trt_out = run_all(engine, val_batch)
    _, ort_out = run_all(tiny_onnx, val_batch)
    assert runner.precision == precision and runner.gpu_ms > 0
    assert np.abs(trt_out["scores"] - ort_out["scores"]).max() < score_atol
    assert np.abs(trt_out["boxes"] - ort_out["boxes"]).max() < 0.5
    _, graphed = run_all(engine, val_batch, cuda_graph=True)
    np.testing.assert_allclose(graphed["scores"], trt_out["scores"], atol=1e-6)
    assert (tmp_path / "timing.cache").stat().st_size > 0


@needs_trt
@pytest.mark.gpu
@pytest.mark.tensorrt
def test_int8_engine_from_the_qdq_onnx_follows_fp32(tiny_onnx, tiny_splits, tmp_path, val_batch):
    prepared = preprocess_for_quantization(tiny_onnx, tmp_path / "prepared.onnx")
    qdq = quantize_onnxruntime(prepared, tmp_path / "int8.onnx", calibration_paths(tiny_splits[0], 16), (128, 128))
    engine = build_engine(qdq, tmp_path / "m_int8.engine", EngineConfig(precision="int8"))
    _, trt_out = run_all(engine, val_batch)
    _, ort_out = run_all(tiny_onnx, val_batch)
    corr = np.corrcoef(trt_out["scores"].ravel(), ort_out["scores"].ravel())[0, 1]
    assert corr > 0.75, corr  # the same bar as ONNX Runtime's own INT8 of this QDQ file


@pytest.mark.parametrize("precision, explicit, version, expected", [
    ("fp32", False, "10.3.0", ((), "none")),
    ("fp16", False, "8.5.2", (("FP16",), "none")),
    ("int8", True, "10.3.0", (("FP16", "INT8"), "explicit (QDQ)")),
    ("int8", True, "8.5.2", (("FP16", "INT8"), "explicit (QDQ)")),
    ("int8", False, "8.6.1", (("FP16", "INT8"), "implicit (entropy calibration)")),
])
def test_precision_plan_without_a_gpu(precision, explicit, version, expected):
    plan = precision_plan(precision, explicit, version, has_entropy_calibrator=True, has_calibration=True, source="m.onnx")
    assert (plan.flags, plan.quantization) == expected


@pytest.mark.parametrize("precision, explicit, version, calibrator, images, message", [
    ("int4", False, "10.3.0", True, True, "precision int4: valid precisions are fp32, fp16, int8"),
    ("fp16", True, "10.3.0", True, True, "m.onnx is quantized (Q/DQ nodes): build it with precision int8"),
    ("int8", False, "10.3.0", True, True, "m.onnx has no Q/DQ nodes and TensorRT 10.3.0 needs explicit quantization"),
    ("int8", False, "8.6.1", False, True, "m.onnx has no Q/DQ nodes and TensorRT 8.6.1 needs explicit quantization"),
    ("int8", False, "8.6.1", True, False, "implicit INT8 calibration needs calibration images"),
])
def test_precision_plan_refuses_what_cannot_build(precision, explicit, version, calibrator, images, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        precision_plan(precision, explicit, version, calibrator, images, "m.onnx")
