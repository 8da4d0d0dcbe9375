"""TensorRT: version and engine-provenance checks run everywhere; engine builds only where TensorRT,
pycuda and a GPU are (they skip elsewhere, saying why)."""

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from deploy.build_engine import EngineConfig, build_engine, build_plan, main, parse_arguments, precision_plan
from deploy.errors import DeviceError, InputError
from deploy.preprocess import preprocess_batch
from deploy.runtimes import open_runner
from deploy.runtimes.tensorrt import (
    TensorRTRunner,
    available,
    check_engine_meta,
    check_version,
    parse_version,
)
from export.calibration import calibration_paths
from export.onnxruntime_int8 import preprocess_for_quantization, quantize_onnxruntime
from tests.conftest import REPO
from tests.deploy import fake_tensorrt

TRT_MISSING = available()
needs_trt = pytest.mark.skipif(TRT_MISSING is not None, reason="TensorRT engine tests need TensorRT and a GPU: "
                                                               f"{TRT_MISSING}")


def test_supported_versions_are_8_5_to_10_x():
    assert check_version("8.5.2.2") == (8, 5) and check_version("8.6.1.post1") == (8, 6)
    assert check_version("10.3.0") == (10, 3)
    for old_or_new in ("8.4.3.1", "7.1.3", "11.0.0"):
        with pytest.raises(InputError, match=rf"TensorRT {old_or_new} is not supported: .*8.5 to 10.x.*<11"):
            check_version(old_or_new)
    with pytest.raises(InputError, match="cannot read a TensorRT version"):
        parse_version("trt")


def test_an_engine_from_another_tensorrt_or_gpu_is_refused_with_a_rebuild_hint():
    meta = {"tensorrt": "8.6.1", "gpu": "Orin"}
    check_engine_meta(meta, "m.engine", "8.6.1.post1", "Orin")
    with pytest.raises(InputError, match=r"m.engine was built with TensorRT 8.6.1, "
                                         r"this device runs 10.3.0: rebuild it"):
        check_engine_meta(meta, "m.engine", "10.3.0", "Orin")
    with pytest.raises(InputError, match=r"built on Orin, this device is NVIDIA H100.*rebuild it on this device"):
        check_engine_meta(meta, "m.engine", "8.6.1", "NVIDIA H100")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_without_tensorrt_building_is_one_clear_error(tiny_onnx, tmp_path):
    with pytest.raises(InputError, match="building a TensorRT engine needs the tensorrt package"):
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
    qdq = quantize_onnxruntime(prepared, tmp_path / "int8.onnx", calibration_paths(tiny_splits[0], 16), (128, 128),
                               tensorrt=True)
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
    plan = precision_plan(precision, explicit, version, has_entropy_calibrator=True, has_calibration=True,
                          source="m.onnx")
    assert (plan.flags, plan.quantization) == expected


@pytest.mark.parametrize("precision, explicit, version, calibrator, images, message", [
    ("int4", False, "10.3.0", True, True, "precision int4: valid precisions are fp32, fp16, int8"),
    ("fp16", True, "10.3.0", True, True, "m.onnx is quantized (Q/DQ nodes): build it with precision int8"),
    ("int8", False, "10.3.0", True, True, "m.onnx has no Q/DQ nodes and TensorRT 10.3.0 needs explicit quantization"),
    ("int8", False, "8.6.1", False, True, "m.onnx has no Q/DQ nodes and TensorRT 8.6.1 needs explicit quantization"),
    ("int8", False, "8.6.1", True, False, "implicit INT8 calibration needs calibration images (--calib-dir, a folder"),
])
def test_precision_plan_refuses_what_cannot_build(precision, explicit, version, calibrator, images, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        precision_plan(precision, explicit, version, calibrator, images, "m.onnx")


# ---------------------------------------------------------------------------------------------------
# The builder's decisions without a GPU (build_plan), and what it asks of TensorRT (recording fakes of
# the 8.x and 10.x API surfaces: tests/deploy/fake_tensorrt.py).

S = (1, 3, 128, 128)
D = (-1, 3, 128, 128)


@pytest.mark.parametrize("version, precision, explicit, shape, max_batch, dla, cores, expected", [
    ("8.5.2", "fp16", False, S, 1, None, 0, (("EXPLICIT_BATCH",), ("FP16",), "none", None, None)),
    ("10.3.0", "fp32", False, S, 1, None, 0, ((), (), "none", None, None)),
    ("10.3.0", "fp16", False, D, 4, None, 0, ((), ("FP16",), "none",
                                              ((1, 3, 128, 128), (4, 3, 128, 128), (4, 3, 128, 128)), None)),
    ("8.6.1", "int8", True, D, 1, 1, 2, (("EXPLICIT_BATCH",), ("FP16", "INT8", "GPU_FALLBACK"), "explicit (QDQ)",
                                         ((1, 3, 128, 128),) * 3, 1)),
    ("10.3.0", "int8", True, S, 1, None, 0, ((), ("FP16", "INT8"), "explicit (QDQ)", None, None)),
    ("8.6.1", "int8", False, S, 1, None, 0, (("EXPLICIT_BATCH",), ("FP16", "INT8"), "implicit (entropy calibration)",
                                             None, None)),
])
def test_build_plan_from_a_table(version, precision, explicit, shape, max_batch, dla, cores, expected):
    plan = build_plan(version, precision, explicit, shape, max_batch, dla, cores, True, True, "m.onnx")
    assert (plan.network_flags, plan.builder_flags, plan.quantization, plan.profile, plan.dla_core) == expected


@pytest.mark.parametrize("version, precision, shape, max_batch, dla, cores, message", [
    ("11.0.0", "fp16", S, 1, None, 0, "TensorRT 11.0.0 is not supported"),
    ("10.3.0", "fp16", S, 1, 0, 0, "dla_core 0: this device has no DLA"),
    ("10.3.0", "fp16", S, 1, 2, 2, "dla_core 2: this device has DLA cores 0 to 1"),
    ("8.5.2", "fp32", S, 1, 0, 2, "DLA runs fp16 or int8 engines, not fp32"),
    ("10.3.0", "fp16", (1, 3, -1, -1), 1, None, 0, r"input shape \[1, 3, -1, -1\]; edgekd engines take"),
    ("10.3.0", "fp16", S, 4, None, 0, "m.onnx: its batch is fixed at 1; max_batch 4 needs a dynamic-batch export"),
])
def test_build_plan_refuses_in_one_line(version, precision, shape, max_batch, dla, cores, message):
    with pytest.raises(InputError, match=message):
        build_plan(version, precision, False, shape, max_batch, dla, cores, True, True, "m.onnx")


@pytest.fixture
def qdq_onnx(tmp_path):
    import onnx

    from tests.conftest import hand_qdq_model

    path = tmp_path / "model.int8.trt.onnx"
    onnx.save(hand_qdq_model(batch="N"), str(path))
    return path


@pytest.mark.parametrize("version, network_flags", [("8.6.1", 1), ("10.3.0", 0)])
def test_the_builder_asks_tensorrt_for_what_the_plan_says(monkeypatch, tiny_onnx, qdq_onnx, tmp_path, version,
                                                          network_flags):
    rec = fake_tensorrt.Recorder()
    fake_tensorrt.install(monkeypatch, version, rec)
    engine = build_engine(tiny_onnx, tmp_path / "m_fp16.engine", EngineConfig(precision="fp16", workspace_mb=64,
                                                                              timing_cache=str(tmp_path / "t.cache")))
    assert rec.named("create_network") == [("create_network", network_flags)]  # EXPLICIT_BATCH on 8.x only
    assert rec.named("set_flag") == [("set_flag", "BuilderFlag.FP16")]
    assert rec.named("set_memory_pool_limit") == [("set_memory_pool_limit", "MemoryPoolType.WORKSPACE", 64 << 20)]
    assert not rec.named("profile.set_shape") and not rec.named("config.DLA_core")
    meta = json.loads((tmp_path / "m_fp16.engine.json").read_text())
    assert engine.is_file() and (tmp_path / "t.cache").read_bytes() == b"timing"
    assert (meta["tensorrt"], meta["gpu"], meta["precision"], meta["quantization"]) == (
        version, "Fake GPU", "fp16", "none")

    rec.calls.clear()
    rec.dla_cores, rec.input_shape = 2, (-1, 3, 4, 4)
    build_engine(qdq_onnx, tmp_path / "m_int8.engine", EngineConfig(precision="int8", max_batch=2, dla_core=1))
    assert [c[1] for c in rec.named("set_flag")] == ["BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.GPU_FALLBACK"]
    assert rec.named("profile.set_shape") == [("profile.set_shape", "images", (1, 3, 4, 4), (2, 3, 4, 4), (2, 3, 4, 4))]
    assert ("config.default_device_type", "DeviceType.DLA") in rec.calls and ("config.DLA_core", 1) in rec.calls
    assert json.loads((tmp_path / "m_int8.engine.json").read_text())["quantization"] == "explicit (QDQ)"


@pytest.mark.parametrize("version, where", [("8.5.2", "node 7: "), ("10.3.0", "node 7 (DequantizeLinear): ")])
def test_the_parsers_errors_reach_the_user_in_one_line(monkeypatch, tiny_onnx, tmp_path, version, where):
    rec = fake_tensorrt.Recorder(parse_ok=False, parse_errors=[(7, "DequantizeLinear",
                                                                "only activation types allowed")])
    fake_tensorrt.install(monkeypatch, version, rec)
    with pytest.raises(InputError, match=r"model.onnx: TensorRT's ONNX parser refused it: "
                                         rf"{re.escape(where)}only activation"):
        build_engine(tiny_onnx, tmp_path / "m.engine", EngineConfig(precision="fp16"))
    assert not (tmp_path / "m.engine").exists() and not rec.named("build_serialized_network")


def test_a_qdq_file_tensorrt_cannot_parse_is_refused_before_the_parser(monkeypatch, tmp_path):
    import onnx

    from tests.conftest import hand_qdq_model

    rec = fake_tensorrt.Recorder()
    fake_tensorrt.install(monkeypatch, "10.3.0", rec)
    onnx.save(hand_qdq_model(zero_dtype=np.uint8), str(tmp_path / "u8.onnx"))
    with pytest.raises(InputError, match=r"u8.onnx: not a Q/DQ file TensorRT can build: "
                                         r"QuantizeLinear 'q_x': zero point"):
        build_engine(tmp_path / "u8.onnx", tmp_path / "m.engine", EngineConfig(precision="int8"))
    assert not rec.named("parse")


def test_tensorrt_11_and_pycuda_without_a_gpu_are_one_clear_error(monkeypatch, tiny_onnx, tmp_path):
    fake_tensorrt.install(monkeypatch, "11.0.0", fake_tensorrt.Recorder())
    with pytest.raises(InputError, match=r"TensorRT 11.0.0 is not supported: .*'tensorrt>=8.5,<11'"):
        build_engine(tiny_onnx, tmp_path / "m.engine", EngineConfig())

    class LogicError(Exception):  # pycuda's own error type, not an ImportError
        pass

    fake_tensorrt.install(monkeypatch, "8.5.2", fake_tensorrt.Recorder(),
                          autoinit_error=LogicError("cuInit failed: no CUDA-capable device is detected"))
    with pytest.raises(InputError, match=r"pycuda cannot open a CUDA device \(LogicError: cuInit failed"):
        build_engine(tiny_onnx, tmp_path / "m.engine", EngineConfig())
    with pytest.raises(InputError, match=r"m.engine: running a TensorRT engine: pycuda cannot open"):
        TensorRTRunner(str(tmp_path / "m.engine"))


def _fake_engine(tmp_path, meta):
    path = tmp_path / "m.engine"
    path.write_bytes(b"fake")
    (tmp_path / "m.engine.json").write_text(json.dumps({"tensorrt": "10.3.0", "gpu": "Fake GPU", **meta}))
    return str(path)


def test_the_runner_sets_the_dla_core_before_deserializing_and_checks_every_return(monkeypatch, tmp_path):
    rec = fake_tensorrt.Recorder()
    fake_tensorrt.install(monkeypatch, "10.3.0", rec)
    runner = TensorRTRunner(_fake_engine(tmp_path, {"dla_core": 1, "precision": "fp16"}))
    names = [c[0] for c in rec.calls]
    assert (names.index("runtime.DLA_core") < names.index("deserialize_cuda_engine")
            and ("runtime.DLA_core", 1) in rec.calls)
    out = runner.infer(np.zeros((1, 3, 128, 128), np.float32))
    assert set(out) == {"boxes", "scores"} and rec.named("execute_async_v3") == [("execute_async_v3", 1234)]
    rec.execute_ok = False  # a failed launch must not hand back the previous call's outputs
    with pytest.raises(DeviceError, match=r"m.engine: execute_async_v3 failed"):
        runner.infer(np.zeros((1, 3, 128, 128), np.float32))
    rec.set_shape_ok = False
    with pytest.raises(InputError, match=r"m.engine: the engine takes no input of shape \[2, 3, 128, 128\]"):
        runner.infer(np.zeros((2, 3, 128, 128), np.float32))


def test_cuda_graph_calls_are_checked_and_instantiated_with_flags(monkeypatch, tmp_path):
    """cuda-python's calls return (error, value); cudaGraphInstantiateWithFlags has one signature from 11.8 to 13."""
    from deploy.runtimes import tensorrt as runtime_module

    rec = fake_tensorrt.Recorder()
    fake_tensorrt.install(monkeypatch, "10.3.0", rec)

    class Cudart:
        cudaStreamCaptureMode = type("M", (), {"cudaStreamCaptureModeGlobal": 0})
        end_error = 0

        def cudaRuntimeGetVersion(self):
            return (0, 12060)

        def cudaDriverGetVersion(self):
            return (0, 12060)

        def cudaStreamBeginCapture(self, stream, mode):
            rec("cudaStreamBeginCapture")
            return (0,)

        def cudaStreamEndCapture(self, stream):
            rec("cudaStreamEndCapture")
            return (self.end_error, "graph")

        def cudaGraphInstantiateWithFlags(self, graph, flags):
            rec("cudaGraphInstantiateWithFlags", graph, flags)
            return (0, "exec")

        def cudaGraphDestroy(self, graph):
            return (0,)

        def cudaGraphLaunch(self, graph_exec, stream):
            rec("cudaGraphLaunch", graph_exec, stream)
            return (0,)

    cudart = Cudart()
    monkeypatch.setattr(runtime_module, "import_cudart", lambda: cudart)
    runner = TensorRTRunner(_fake_engine(tmp_path, {}), cuda_graph=True)
    runner.infer(np.zeros((1, 3, 128, 128), np.float32))
    assert ("cudaGraphInstantiateWithFlags", "graph", 0) in rec.calls and ("cudaGraphLaunch", "exec", 1234) in rec.calls
    cudart.end_error = 900  # cudaErrorStreamCaptureInvalidated
    rec.calls.clear()
    with pytest.raises(DeviceError, match=r"CUDA graph: cudaStreamEndCapture failed \(900\)"):
        runner.infer(np.zeros((2, 3, 128, 128), np.float32))


def test_cuda_python_of_a_newer_cuda_than_the_driver_is_refused_with_the_pin(monkeypatch):
    import types

    from deploy.runtimes.tensorrt import import_cudart

    cudart = types.SimpleNamespace(cudaRuntimeGetVersion=lambda: (0, 13000), cudaDriverGetVersion=lambda: (0, 12060))
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    with pytest.raises(InputError, match=r"cuda-python targets CUDA 13.0, this device's driver CUDA 12.6: "
                                         r"pip install 'cuda-python>=12,<13'"):
        import_cudart()


def test_build_engine_runs_as_a_script_without_torch(tmp_path):
    """What a Jetson runs from the copied deploy/ folder: Python 3.8 syntax (tests/test_layering.py), no torch."""
    code = ("import runpy, sys\nsys.modules['torch'] = None\nsys.modules['tensorrt'] = None\n"
            "sys.argv = ['build_engine.py', *sys.argv[1:]]\n"
            "runpy.run_path('deploy/build_engine.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.onnx")], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'none.onnx'}: no such file"
    import onnx

    from tests.conftest import hand_qdq_model

    onnx.save(hand_qdq_model(), str(tmp_path / "m.onnx"))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx"), "--precision", "int8"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "building a TensorRT engine needs the tensorrt package" in proc.stderr


def test_build_engine_runs_without_pillow_and_names_bad_paths(tmp_path):
    """A Jetson's system Python may lack Pillow: only --calib-dir reads images, so only it needs Pillow."""
    import onnx

    from tests.conftest import hand_qdq_model

    code = ("import runpy, sys\nsys.modules['torch'] = None\nsys.modules['tensorrt'] = None\n"
            "sys.modules['PIL'] = None\nsys.argv = ['build_engine.py', *sys.argv[1:]]\n"
            "runpy.run_path('deploy/build_engine.py', run_name='__main__')")
    model = tmp_path / "m.onnx"
    onnx.save(hand_qdq_model(), str(model))
    (tmp_path / "images").mkdir()
    cases = [
        ([str(tmp_path)], f"{tmp_path}: is a directory; give the .onnx file"),
        ([str(model), "--precision", "int8"], f"{model}: building a TensorRT engine needs the tensorrt package"),
        ([str(model), "--calib-dir", str(tmp_path / "nope")], f"--calib-dir {tmp_path / 'nope'}: no such folder"),
        ([str(model), "--calib-dir", str(tmp_path / "images")],
         f"--calib-dir {tmp_path / 'images'}: reading images needs Pillow, which this Python lacks: pip install"),
    ]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}"), proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1


def test_calib_images_is_a_deprecated_spelling_of_calib_dir(tmp_path, capsys):
    """The pipeline's calib_images settings are a count; the builder's folder option is --calib-dir, and
    scripts written with --calib-images still build, told once to change."""
    import onnx

    from tests.conftest import hand_qdq_model

    assert parse_arguments(["m.onnx", "--calib-dir", "imgs"]).calib_dir == "imgs"
    assert capsys.readouterr().err == ""
    warning = "warning: --calib-images is deprecated, use --calib-dir (a folder of images)\n"
    for spelling in (["--calib-images", "imgs"], ["--calib-images=imgs"], ["--calib-im", "imgs"]):
        assert parse_arguments(["m.onnx", *spelling]).calib_dir == "imgs"
        assert capsys.readouterr().err == warning
    with pytest.raises(SystemExit):
        parse_arguments(["m.onnx", "--calib-dir", "a", "--calib-images", "b"])
    assert "give only --calib-dir" in capsys.readouterr().err

    model = tmp_path / "m.onnx"
    onnx.save(hand_qdq_model(), str(model))
    assert main([str(model), "--calib-images", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: --calib-images is deprecated")
    assert err[1].startswith(f"error: --calib-dir {tmp_path / 'nope'}: no such folder")


def test_nms_in_the_engine_replaces_the_outputs_by_efficient_nms(monkeypatch, tiny_onnx, tmp_path):
    rec = fake_tensorrt.Recorder()
    fake_tensorrt.install(monkeypatch, "10.3.0", rec)
    build_engine(tiny_onnx, tmp_path / "m.engine", EngineConfig(precision="fp16", nms=True))
    assert ("get_plugin_creator", "EfficientNMS_TRT", "1") in rec.calls
    name, fields = rec.named("create_plugin")[0][1:]
    assert name == "efficient_nms" and {f[0]: f[2] for f in fields} == {
        "score_threshold": pytest.approx(0.05), "iou_threshold": pytest.approx(0.6), "max_output_boxes": 100,
        "background_class": -1, "score_activation": 0, "class_agnostic": 0, "box_coding": 0}
    assert {f[0]: f[1] for f in fields}["max_output_boxes"] == "int32"
    assert [c[1] for c in rec.named("unmark_output")] == ["boxes", "scores"]
    assert rec.named("add_plugin_v2")[0][1] == ["boxes", "scores"]
    assert [c[1] for c in rec.named("mark_output")] == ["num_detections", "detection_boxes", "detection_scores",
                                                        "detection_classes"]
    with pytest.raises(InputError, match=r"NMS in the engine goes after the outputs 'boxes' and 'scores'"):
        build_plan("10.3.0", "fp16", False, S, 1, None, 0, True, True, "m.nms.onnx", nms=True,
                   outputs=("det_boxes", "det_scores", "det_labels"))


def test_an_engine_with_nms_reads_as_kept_detections():
    """num_detections says how many of the fixed slots hold detections (batch 1)."""
    from deploy.predict import image_detections, runner_infer
    from deploy.preprocess import Letterbox

    class Runner:
        outputs = {"num_detections": [1, 1], "detection_boxes": [1, 100, 4], "detection_scores": [1, 100],
                   "detection_classes": [1, 100]}

        def infer(self, images):
            boxes = np.zeros((1, 100, 4), np.float32)
            boxes[0, :2] = [[10, 10, 50, 50], [60, 60, 90, 100]]
            scores = np.zeros((1, 100), np.float32)
            scores[0, :2] = [0.9, 0.4]
            return {"num_detections": np.array([[2]], np.int32), "detection_boxes": boxes, "detection_scores": scores,
                    "detection_classes": np.array([[3, 1] + [0] * 98], np.int32)}

    outputs = runner_infer(Runner())(np.zeros((1, 3, 128, 128), np.float32))
    boxes, scores, labels = image_detections(outputs, 0, Letterbox(0.5, 0, 0, 256, 256))
    assert labels.tolist() == [3, 1] and scores.tolist() == pytest.approx([0.9, 0.4])
    assert boxes.tolist() == [[20, 20, 100, 100], [120, 120, 180, 200]]
