import warnings

import numpy as np
import onnx
import pytest
import torch

from deploy.errors import InputError
from deploy.preprocess import preprocess_batch
from deploy.qdq_check import check_tensorrt_qdq, tensorrt_qdq_problems
from deploy.runtimes import open_runner
from export.calibration import calibration_paths, tail_nodes
from export.onnxruntime_int8 import (
    keep_float_until,
    onnx_decode_nodes,
    preprocess_for_quantization,
    quantize_onnxruntime,
    quantized_nodes,
)
from export.openvino_int8 import (
    openvino_decode_ops,
    openvino_float_convolutions,
    openvino_ir,
    quantize_openvino,
)
from tests.conftest import hand_qdq_model
from tests.cpu_isa import float_kernel_family, kernel_family

DECODE_OPS = {"Sigmoid", "Softmax", "ReduceSum", "Concat", "Sub"}


@pytest.fixture(scope="module")
def val_images(tiny_splits):
    val = tiny_splits[1]
    return preprocess_batch([val.image_path(i) for i in val.images[:8]], (128, 128))[0]


@pytest.fixture(scope="module")
def ort_int8(tiny_onnx, tiny_splits, tmp_path_factory):
    work = tmp_path_factory.mktemp("int8")
    prepared = preprocess_for_quantization(tiny_onnx, work / "prepared.onnx")
    paths = calibration_paths(tiny_splits[0], 16)
    return quantize_onnxruntime(prepared, work / "model.int8.onnx", paths, (128, 128)), prepared


@pytest.fixture(scope="module")
def ov_irs(tiny_onnx, tiny_splits, tmp_path_factory):
    work = tmp_path_factory.mktemp("ov")
    paths = calibration_paths(tiny_splits[0], 16)
    return {"fp32": openvino_ir(tiny_onnx, work / "fp32.xml"),
            "fp16": openvino_ir(tiny_onnx, work / "fp16.xml", fp16=True),
            "int8": quantize_openvino(tiny_onnx, work / "int8.xml", paths, (128, 128))}


def outputs(path, x):
    runner = open_runner(str(path))
    return runner, [runner.infer(x[i : i + 1]) for i in range(len(x))]


def stacked(outs, key):
    return np.concatenate([o[key] for o in outs])


def test_tail_nodes_on_a_hand_made_graph():
    # a -> conv1 -> b -> conv2 -> c -> d ; b -> e (a side branch after conv1 that reaches no conv)
    names = ["a", "conv1", "b", "conv2", "c", "d", "e"]
    consumers = {"a": ["conv1"], "conv1": ["b"], "b": ["conv2", "e"], "conv2": ["c"], "c": ["d"]}
    is_conv = {n: n.startswith("conv") for n in names}
    assert tail_nodes(names, consumers, is_conv) == {"c", "d", "e"}


def test_the_decode_is_found_in_the_exported_graph(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    tail = set(onnx_decode_nodes(model))
    kinds = {n.name: n.op_type for n in model.graph.node}
    assert {kinds[n] for n in tail} >= DECODE_OPS
    assert "Conv" not in {kinds[n] for n in tail}


def test_onnxruntime_int8_leaves_the_decode_in_float(ort_int8):
    model = onnx.load(str(ort_int8[0]))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 50  # the convolutions are quantized
    tail = set(onnx_decode_nodes(model))
    assert tail and not tail & quantized_nodes(model)
    # nothing between the last convolutions and the outputs is a Q/DQ node
    assert not {n.op_type for n in model.graph.node if n.name in tail} & {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.parametrize("symmetric, min_corr", [(True, 0.75), (False, 0.9)])  # measured 0.79 and 0.93
def test_onnxruntime_int8_scores_follow_fp32(ort_int8, tiny_onnx, tiny_splits, val_images, tmp_path, symmetric,
                                             min_corr):
    path = ort_int8[0] if symmetric else quantize_onnxruntime(
        ort_int8[1], tmp_path / "u8.onnx", calibration_paths(tiny_splits[0], 16), (128, 128), symmetric=False)
    runner, int8 = outputs(path, val_images)
    _, fp32 = outputs(tiny_onnx, val_images)
    assert runner.precision == "int8"
    corr = np.corrcoef(stacked(int8, "scores").ravel(), stacked(fp32, "scores").ravel())[0, 1]
    box_err = np.abs(stacked(int8, "boxes") - stacked(fp32, "boxes")).mean()
    print(f"ORT INT8 (symmetric={symmetric}) vs FP32: scores corr {corr:.4f}, boxes mean abs err {box_err:.3f} px")
    assert corr > min_corr, corr
    assert box_err < 1.0, box_err  # pixels, at 128 x 128


@pytest.fixture(scope="module")
def trt_int8(ort_int8, tiny_splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "model.int8.trt.onnx"
    return quantize_onnxruntime(ort_int8[1], out, calibration_paths(tiny_splits[0], 16), (128, 128), tensorrt=True)


def test_the_tensorrt_file_passes_the_qdq_check_and_the_default_form_fails_naming_the_node(trt_int8, ort_int8):
    check_tensorrt_qdq(trt_int8)
    model = onnx.load(str(trt_int8))
    stored = {t.name for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and not any(n.input[0] in stored for n in dq)  # every DQ reads a Q: pairs on the float weights
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert convs and all(n.input[2] in stored for n in convs)  # float biases, stored as they are
    default = onnx.load(str(ort_int8[0]))  # ONNX Runtime's default: stored int8 weights and int32 biases
    problems = tensorrt_qdq_problems(default)
    first_lone = next(n for n in default.graph.node if n.op_type == "DequantizeLinear"
                      and n.input[0] in {t.name for t in default.graph.initializer})
    assert first_lone.name in problems[0] and "only activation types allowed" in problems[0]
    assert any("a quantized bias" in p for p in problems) and any("its bias is quantized" in p for p in problems)
    with pytest.raises(InputError, match=rf"model.int8.onnx: not a Q/DQ file TensorRT can build: DequantizeLinear "
                                         rf"'{first_lone.name}'.*\(and {len(problems) - 1} more\)"):
        check_tensorrt_qdq(ort_int8[0])


def test_the_qdq_check_against_hand_made_graphs():
    graph = hand_qdq_model
    assert tensorrt_qdq_problems(graph()) == []
    assert "zero point 'xz' is uint8" in tensorrt_qdq_problems(graph(zero_dtype=np.uint8))[0]
    assert "values [3]" in tensorrt_qdq_problems(graph(zero=3))[0]
    assert "no zero point, which means uint8" in tensorrt_qdq_problems(graph(with_zero=False))[0]
    assert "QuantizeLinear 'q_w': a Conv weight quantized along axis 1" in tensorrt_qdq_problems(graph(axis=1))[0]
    assert "an activation quantized per channel" in tensorrt_qdq_problems(
        graph(act_scale=np.full(3, 0.1, np.float32)))[0]
    assert "1 of its 1 scales are not positive" in tensorrt_qdq_problems(graph(act_scale=0.0))[0]
    assert "1 of its 1 scales are subnormal" in tensorrt_qdq_problems(graph(act_scale=1e-40))[0]
    float_model = graph()
    del float_model.graph.node[:4]
    float_model.graph.node[0].input[:] = ["x", "w"]
    assert "no QuantizeLinear / DequantizeLinear nodes" in tensorrt_qdq_problems(float_model)[0]


@pytest.mark.slow
def test_openvino_fp32_matches_onnxruntime(ov_irs, tiny_onnx, val_images):
    # On every CPU, bf16-capable ones included: the FP32 IR compiles with f32 asked explicitly.
    runner, ov = outputs(ov_irs["fp32"], val_images)
    ort_runner, ort = outputs(tiny_onnx, val_images)
    assert runner.precision == "fp32" and runner.inputs == {"images": [1, 3, 128, 128]}
    assert runner.executed_precision == "fp32" and runner.precision_warning is None
    assert runner.execution["inference_precision_hint"] == "f32"
    assert (ort_runner.precision, ort_runner.executed_precision) == ("fp32", "fp32")
    assert ort_runner.execution["providers"] == ["CPUExecutionProvider"] and not ort_runner.execution["qdq"]
    assert np.abs(stacked(ov, "scores") - stacked(ort, "scores")).max() < 1e-4
    assert np.abs(stacked(ov, "boxes") - stacked(ort, "boxes")).max() < 1e-2


@pytest.mark.slow
def test_openvino_fp16_and_int8(ov_irs, tiny_onnx, val_images):
    _, ort = outputs(tiny_onnx, val_images)
    fp16_runner, fp16 = outputs(ov_irs["fp16"], val_images)
    int8_runner, int8 = outputs(ov_irs["int8"], val_images)
    assert (fp16_runner.precision, int8_runner.precision) == ("fp16", "int8")
    # the FP16 IR's f16 weights are decompressed: f32 arithmetic unless asked otherwise
    assert (fp16_runner.executed_precision, int8_runner.executed_precision) == ("fp32", "int8")
    assert np.abs(stacked(fp16, "scores") - stacked(ort, "scores")).max() < 5e-3
    corr = np.corrcoef(stacked(int8, "scores").ravel(), stacked(ort, "scores").ravel())[0, 1]
    print(f"OpenVINO INT8 vs FP32: scores corr {corr:.4f}")
    assert corr > 0.9, corr


@pytest.mark.slow
def test_openvino_int8_leaves_the_decode_in_float(ov_irs):
    import openvino as ov

    model = ov.Core().read_model(str(ov_irs["int8"]))
    kinds = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops()}
    tail = openvino_decode_ops(model)
    assert {"Sigmoid", "Softmax"} <= {kinds[n] for n in tail}
    assert "FakeQuantize" not in {kinds[n] for n in tail}
    for op in model.get_ops():  # no decode op reads a fake-quantized tensor
        if op.get_friendly_name() in tail:
            assert all(v.get_node().get_type_name() != "FakeQuantize" for v in op.input_values())
    assert sum(k == "FakeQuantize" for k in kinds.values()) > 50 and openvino_float_convolutions(model) == []


def test_calibration_images_come_from_train_and_too_few_is_an_error(tiny_splits, capsys):
    train, val = tiny_splits
    paths = calibration_paths(train, 16, seed=0)
    assert len(set(paths)) == 16 and all(p.startswith(train.image_dir) for p in paths)
    assert paths == calibration_paths(train, 16, seed=0) != calibration_paths(train, 16, seed=1)
    # a small split calibrates on every image it has, with one warning line (a 25-image user split)
    assert sorted(calibration_paths(train, 300)) == sorted(train.image_path(i) for i in train.images)
    assert "quantize.calib_images=300, but the train split" in capsys.readouterr().out
    with pytest.raises(InputError, match="at least 8 calibration images"):
        calibration_paths(train, 2)


def test_keep_float_until_finds_the_fewest_layers_that_hold_the_gate():
    ranked = [f"conv{i}" for i in range(20)]
    calls = []

    def evaluate(kept):  # AP recovers by 0.4 per float layer from 27.0; float AP 30.0, gate 1.0 -> 5 layers
        calls.append(len(kept))
        return 27.0 + 0.4 * len(kept)
    kept, trials = keep_float_until(ranked, evaluate, 30.0, 1.0)
    assert kept == ranked[:5]
    assert calls == [1, 2, 4, 8, 6, 5]  # doubling, then bisection between 4 (fails) and 8 (holds)
    assert trials[-1]["drop"] == pytest.approx(1.0)


def test_keep_float_until_gives_up_beyond_the_limit():
    kept, trials = keep_float_until(["a", "b", "c"], lambda kept: 10.0, 30.0, 1.0, max_layers=3)
    assert kept == [] and [t["kept"] for t in trials] == [1, 2, 3]


def test_uint8_activations_fail_the_tensorrt_check_by_their_zero_points(ort_int8, tiny_splits, tmp_path):
    u8 = quantize_onnxruntime(ort_int8[1], tmp_path / "u8.onnx", calibration_paths(tiny_splits[0], 16), (128, 128),
                              symmetric=False, tensorrt=False)
    problems = tensorrt_qdq_problems(onnx.load(str(u8)))
    assert any("is uint8" in p and "zero point" in p for p in problems)


def test_layer_kinds_by_hand():
    from pipeline.tools.bench_openvino import layer_group

    assert layer_group("Convolution", "brgconv_avx2_1x1_f32") == "1x1 conv"
    assert layer_group("Convolution", "jit_avx2_I8") == "kxk conv"
    assert layer_group("GroupConvolution", "brgconv_avx2_dw_f32") == "group/depthwise conv"
    assert layer_group("Softmax", "jit_avx2_f32") == "Softmax"


@pytest.mark.slow
def test_openvino_layer_profile_shows_int8_convolutions(ov_irs):
    from pipeline.tools.bench_openvino import layers_table

    text, rows = layers_table([str(ov_irs["fp32"]), str(ov_irs["int8"])], iters=3)
    fp32, int8 = (r["layers"] for r in rows)
    convs = [g for g in int8 if g.endswith("conv")]
    assert convs and all(int8[g]["precisions"] == ["i8"] for g in convs), int8  # OpenVINO ran them in int8
    assert all(fp32[g]["precisions"] == ["f32"] for g in fp32 if g.endswith("conv"))
    assert int8["Softmax"]["precisions"] == ["f32"]  # the decode stayed float
    assert all(v["ms"] > 0 for v in int8.values())
    assert "| **total** |" in text and text.count("\n") == len(set(fp32) | set(int8)) + 2
    # The kernel families are this CPU's: AMX tiles for the int8 1x1 and kxk convolutions on an AMX
    # Xeon, AVX-512 or AVX2 elsewhere; float convolutions never on AMX; depthwise ones never on AMX.
    family, float_family = kernel_family(), float_kernel_family()
    if family != "other":
        for g in ("1x1 conv", "kxk conv"):
            assert all(family in k for k in int8[g]["kernels"]), (family, int8[g]["kernels"])
        for g in convs:
            assert all(float_family in k and "amx" not in k
                       for k in fp32[g]["kernels"]), (float_family, fp32[g]["kernels"])
        if "group/depthwise conv" in int8:
            assert all("amx" not in k for k in int8["group/depthwise conv"]["kernels"])


@pytest.mark.slow
def test_bf16_is_the_fp32_ir_compiled_for_bf16_where_the_cpu_has_it(ov_irs, val_images):
    """The openvino_bf16 artifact: no file of its own, the FP32 IR with INFERENCE_PRECISION_HINT bf16."""
    import openvino as ov

    from deploy.runtimes.openvino import device_capabilities

    if "BF16" not in device_capabilities(ov.Core(), "CPU"):  # the expectation on a CPU without bf16: one line
        with pytest.raises(InputError, match=r"bf16 inference asked, but CPU reports no BF16 "
                                             r"in OPTIMIZATION_CAPABILITIES"):
            open_runner(str(ov_irs["fp32"]), inference_precision="bf16")
        return
    try:
        bf16_runner, bf16 = outputs_at(ov_irs["fp32"], val_images, "bf16")
    except InputError as e:  # reported, but capped away (ONEDNN_MAX_CPU_ISA=AVX2): one line naming the IR
        assert kernel_family() in ("avx2", "sse41") and "cannot compile it for CPU with bf16 inference" in str(e)
        return
    fp32_runner, fp32 = outputs(ov_irs["fp32"], val_images)
    assert (bf16_runner.precision, bf16_runner.executed_precision) == ("bf16", "bf16")
    assert bf16_runner.execution["inference_precision_hint"] == "bf16" and bf16_runner.precision_warning is None
    assert set(bf16_runner.execution["convolutions"]) == {"bf16"}
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%): on the tiny model's scores (0.3 to 0.7)
    # the largest difference measured was 8.7e-3 on an AMX Xeon, boxes 0.6 px at 128 x 128.
    score_diff = np.abs(stacked(bf16, "scores") - stacked(fp32, "scores")).max()
    box_diff = np.abs(stacked(bf16, "boxes") - stacked(fp32, "boxes")).max()
    print(f"OpenVINO bf16 vs f32: scores max abs diff {score_diff:.2e}, boxes {box_diff:.2f} px")
    assert 0 < score_diff < 2e-2 and box_diff < 2.0


def outputs_at(path, x, inference_precision):
    runner = open_runner(str(path), inference_precision=inference_precision)
    return runner, [runner.infer(x[i : i + 1]) for i in range(len(x))]


def test_the_executed_precision_of_a_hand_built_ir(tmp_path):
    """One convolution built with OpenVINO's own opset: its runtime precision read back from the execution
    graph is f32 under the default and bf16 when asked, where the CPU has bf16."""
    import openvino as ov
    import openvino.opset13 as ops

    from deploy.runtimes.openvino import device_capabilities

    x = ops.parameter([1, 8, 16, 16], np.float32, name="images")
    w = ops.constant(np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32))
    conv = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    model = ov.Model([ops.result(conv)], [x], "one_conv")
    ov.save_model(model, str(tmp_path / "conv.xml"), compress_to_fp16=False)
    runner = open_runner(str(tmp_path / "conv.xml"))
    assert (runner.precision, runner.executed_precision) == ("fp32", "fp32")
    assert runner.execution["convolutions"] == {"fp32": 1} and runner.threads >= 1
    if "BF16" in device_capabilities(ov.Core(), "CPU") and kernel_family() not in ("avx2", "sse41"):
        bf16 = open_runner(str(tmp_path / "conv.xml"), inference_precision="bf16")
        assert (bf16.precision, bf16.executed_precision, bf16.execution["convolutions"]) == (
            "bf16", "bf16", {"bf16": 1})


@pytest.mark.slow
def test_inference_precision_bad_inputs(ov_irs, monkeypatch):
    from deploy.runtimes import openvino as ov_runner
    from export.settings import QuantizeConfig
    from pipeline.stages.quantize import openvino_inference

    with pytest.raises(InputError, match=r"unknown inference precision 'f64'; valid: f32, bf16, f16"):
        open_runner(str(ov_irs["fp32"]), inference_precision="f64")
    with pytest.raises(InputError, match=r"quantize.inference_precision.openvino_fp32: unknown inference precision "
                                         r"'fp32'"):
        openvino_inference(QuantizeConfig(inference_precision={"openvino_fp32": "fp32"}))
    with pytest.raises(InputError, match=r"'openvino_fp8' is no OpenVINO artifact"):
        openvino_inference(QuantizeConfig(inference_precision={"openvino_fp8": "f16"}))
    assert openvino_inference(QuantizeConfig(inference_precision={"openvino_fp16": "f16"}))["openvino_fp16"] == "f16"
    # an IR whose stored precision contradicts the request: f16 weights asked to run in bf16
    with pytest.raises(InputError, match=r"stores f16 weights; bf16 inference applies to an FP32 IR"):
        monkeypatch.setattr(ov_runner, "device_capabilities", lambda core, device: ["FP32", "BF16"])
        open_runner(str(ov_irs["fp16"]), inference_precision="bf16")
    # a CPU without bf16 (as an AVX2-only EPYC reports): one line, nothing compiled
    monkeypatch.setattr(ov_runner, "device_capabilities", lambda core, device: ["FP32", "INT8"])
    with pytest.raises(InputError, match=r"bf16 inference asked, but CPU reports no BF16 "
                                         r"in OPTIMIZATION_CAPABILITIES \(FP32, INT8\)"):
        open_runner(str(ov_irs["fp32"]), inference_precision="bf16")


def test_the_quantize_stage_has_a_builder_for_each_planned_artifact_in_its_order():
    """run_quantize builds what planned_artifacts lists, each with its BUILDERS entry, in that order (a
    builder reads an earlier one's file): the fullest plan is the builders' table itself."""
    from export.openvino_int8 import OPENVINO_INFERENCE
    from pipeline.config import PipelineConfig
    from pipeline.stages.quantize import BUILDERS, SKIPPABLE, planned_artifacts

    cfg = PipelineConfig()
    cfg.quantize.artifacts = ["onnxruntime_int8", "onnxruntime_int8_cpu", "onnxruntime_int8_trt", "openvino_fp32",
                              "openvino_bf16", "openvino_fp16", "openvino_int8"]
    cfg.export.uint8_input, cfg.export.nms = True, "graph"
    assert planned_artifacts(cfg) == list(BUILDERS)
    cfg.quantize.artifacts, cfg.export.uint8_input, cfg.export.nms = ["openvino_bf16"], False, "host"
    assert planned_artifacts(cfg) == ["openvino_fp32", "openvino_bf16"]  # bf16 compiles the FP32 IR
    assert (set(SKIPPABLE) <= set(BUILDERS)
            and {n for n in BUILDERS if n.startswith("openvino")} == set(OPENVINO_INFERENCE))


def test_onnxruntime_reports_the_int8_kernels_it_fused(ort_int8, tiny_splits, tmp_path):
    # ONNX Runtime fuses Q/DQ pairs around a Conv into QLinearConv where it has a kernel for the types;
    # the rest run dequantized in float. Measured on the tiny model (66 convolutions, AMX Xeon and
    # ORT 1.32): uint8 activations 60 fused, symmetric int8 activations (TensorRT's form) only 32.
    symmetric = open_runner(str(ort_int8[0]))
    u8 = open_runner(str(quantize_onnxruntime(ort_int8[1], tmp_path / "u8.onnx", calibration_paths(tiny_splits[0], 16),
                                              (128, 128), symmetric=False)))
    for runner in (symmetric, u8):
        assert runner.precision == "int8" and runner.execution["qdq"] and runner.precision_warning is None
        assert set(runner.executed_precision.split("+")) == set(runner.execution["convolutions"]) >= {"int8"}
    assert u8.execution["convolutions"]["int8"] >= symmetric.execution["convolutions"]["int8"] > 0
    assert sum(u8.execution["convolutions"].values()) == sum(symmetric.execution["convolutions"].values())


def test_layer_profile_of_a_missing_ir_is_a_one_line_error(tmp_path, capsys):
    from pipeline.tools.bench_openvino import main

    missing = tmp_path / "model_fp16.xml"
    assert main(["--layers", "--json", str(tmp_path / "l.json"), str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {missing}: no such IR (run the quantize stage first, "
                                               "or pick RUN=)")
    assert not (tmp_path / "l.json").exists()


@pytest.mark.slow
def test_onnxruntime_accuracy_aware_keeps_the_fewest_sensitive_convolutions_in_float(ort_int8, tiny_splits, tmp_path):
    """The stage's search through its evaluate(model file) -> AP callback. The stand-in AP recovers 0.4 points
    per convolution the file runs in float (27.0 with none; float 30.0, gate 1.0): 5 must stay float."""
    import shutil

    from export.onnxruntime_int8 import onnxruntime_accuracy_aware

    int8, prepared = ort_int8
    out = shutil.copy(int8, tmp_path / "model.int8.onnx")
    def float_convs(path):  # convolutions whose weight is a float initializer, not an int8 one dequantized
        graph = onnx.load(str(path)).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return sum(n.op_type == "Conv" and n.input[1] not in dequantized for n in graph.node)

    baseline = float_convs(int8)  # the decode's convolutions, float already

    def evaluate(path):
        return 27.0 + 0.4 * (float_convs(path) - baseline)

    extra = onnxruntime_accuracy_aware(prepared, out, calibration_paths(tiny_splits[0], 16), (128, 128), evaluate,
                                       float_ap=30.0, max_drop=1.0)
    assert len(extra["kept_float"]) == 5 and [t["kept"] for t in extra["search"]] == [1, 2, 4, 8, 6, 5]
    assert float_convs(out) - baseline == 5  # the file on disk was requantized with those five in float
    sqnr = [k["sqnr_db"] for k in extra["kept_float"]]
    assert sqnr == sorted(sqnr)  # the most damaged (lowest SQNR) first


@pytest.mark.slow
def test_openvino_uint8_input_irs_follow_their_float_input_ones(ov_irs, tiny_splits, tmp_path):
    """PrePostProcessor puts cast, mean/std and layout in front of the FP32 and the INT8 IR; on images
    that fill the input (no padding to round) the outputs match the float-input IR's."""
    from deploy.preprocess import load_image, model_input
    from export.openvino_int8 import openvino_uint8_input

    val = tiny_splits[1]
    worst = {}
    for name in ("fp32", "int8"):
        u8 = openvino_uint8_input(ov_irs[name], tmp_path / f"{name}.uint8.xml")
        runner, ref_runner = open_runner(str(u8)), open_runner(str(ov_irs[name]))
        assert runner.input_uint8 and runner.inputs[runner.input_name] == [1, 128, 128, 3]
        assert runner.precision == ref_runner.precision
        diff = 0.0
        for info in val.images[:6]:
            image = load_image(val.image_path(info))[:128, :128]  # fills the 128 x 128 input: no padding
            got = runner.infer(model_input(image, (128, 128), uint8=True)[0][None])
            ref = ref_runner.infer(model_input(image, (128, 128))[0][None])
            diff = max(diff, float(np.abs(got["scores"] - ref["scores"]).max()))
        worst[name] = diff
    print(f"OpenVINO uint8-input vs float-input IRs, scores max |diff|: {worst}")
    assert worst["fp32"] < 1e-4 and worst["int8"] < 1e-4  # measured 2.7e-7 and 0.0


@pytest.fixture(scope="module")
def nms_irs(ov_irs, tiny_model, tiny_splits, tmp_path_factory):
    """The INT8 IR with NMS appended (what the stage builds) and, as the reference, NNCF run again on
    model.nms.onnx (what it built before)."""
    from distill.models.detector import load_detector
    from export.onnx import export_onnx
    from export.openvino_int8 import openvino_nms_ir

    work = tmp_path_factory.mktemp("nms")
    detector, classes, _ = load_detector(tiny_model[2])
    graph_nms = export_onnx(detector, classes, work / "model.nms.onnx", (128, 128), graph_nms=True)
    paths = calibration_paths(tiny_splits[0], 16)
    recalibrated = quantize_openvino(graph_nms, work / "recalibrated.xml", paths, (128, 128))
    return {"appended": openvino_nms_ir(ov_irs["int8"], work / "int8.nms.xml"), "recalibrated": recalibrated}


QUANTIZED_KINDS = ("Convolution", "GroupConvolution", "FakeQuantize")


def constants_behind(model) -> dict[str, list]:
    """For every Convolution, GroupConvolution and FakeQuantize (by name), per input: the dtype, shape and bytes of
    the constants it is computed from (weights through their decompression, FakeQuantize ranges); None for an
    input computed from the image."""
    constant: dict[str, bool] = {}
    for op in model.get_ordered_ops():  # topological: an op is constant when all it reads is
        kind = op.get_type_name()
        reads = all(constant[v.get_node().get_friendly_name()] for v in op.input_values())
        constant[op.get_friendly_name()] = kind == "Constant" or (kind != "Parameter" and reads)

    def leaves(node) -> list:
        if node.get_type_name() == "Constant":
            data = node.get_data()
            return [(str(data.dtype), data.shape, data.tobytes())]
        return [leaf for v in node.input_values() for leaf in leaves(v.get_node())]

    return {op.get_friendly_name(): [leaves(v.get_node()) if constant[v.get_node().get_friendly_name()] else None
                                     for v in op.input_values()]
            for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZED_KINDS}


@pytest.mark.slow
def test_the_nms_ir_keeps_the_int8_irs_weights_and_scales_bit_for_bit(ov_irs, nms_irs):
    import openvino as ov

    core = ov.Core()
    int8, appended = core.read_model(str(ov_irs["int8"])), core.read_model(str(nms_irs["appended"]))
    ours, theirs = constants_behind(appended), constants_behind(int8)
    kinds = {op.get_friendly_name(): op.get_type_name() for op in int8.get_ops()}
    assert sum(op.get_type_name() == "FakeQuantize" for op in int8.get_ops()) > 50
    assert len(theirs) == sum(op.get_type_name() in QUANTIZED_KINDS for op in int8.get_ops())  # names are unique
    fake_quantize = [v for k, v in theirs.items() if kinds[k] == "FakeQuantize"]
    assert all(None not in ranges[1:] for ranges in fake_quantize)  # its four range inputs were read back
    assert ours == theirs

    def signature(model):
        return [(o.get_any_name(), o.get_element_type(), o.get_partial_shape()) for o in model.outputs]
    assert signature(appended) == signature(core.read_model(str(nms_irs["recalibrated"])))
    assert [o.get_any_name() for o in appended.outputs] == ["det_boxes", "det_scores", "det_labels"]


@pytest.mark.slow
def test_the_nms_ir_keeps_what_recalibration_and_host_nms_keep(ov_irs, nms_irs, val_images, tmp_path):
    """The INT8 IR with NMS appended detects what NNCF run again on model.nms.onnx does (the same INT8
    network), and what host NMS keeps from the INT8 IR's outputs; with a uint8 input too."""
    from deploy.postprocess import select_detections
    from deploy.predict import runner_infer
    from export.openvino_int8 import openvino_uint8_input

    appended, recalibrated = (runner_infer(open_runner(str(nms_irs[k]))) for k in ("appended", "recalibrated"))
    host = open_runner(str(ov_irs["int8"]))
    compared = 0
    for x in val_images:
        boxes, scores, labels = (o[0] for o in appended(x[None]))
        out = host.infer(x[None])
        for ref_boxes, ref_scores, ref_labels in (select_detections(out["boxes"][0], out["scores"][0]),
                                                  [o[0] for o in recalibrated(x[None])]):
            assert labels.tolist() == ref_labels.tolist()
            np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
            np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)
        compared += len(labels)
    assert compared > 20
    u8 = open_runner(str(openvino_uint8_input(nms_irs["appended"], tmp_path / "int8.uint8.nms.xml")))
    assert u8.input_uint8 and u8.precision == "int8" and list(u8.outputs) == ["det_boxes", "det_scores", "det_labels"]


def split_network(anchors: int, classes: int, batch: int = -1):
    """An OpenVINO model whose outputs `boxes` [N, A, 4] and `scores` [N, A, C] are slices of its input
    [N, A, 4 + C]: detector outputs chosen by hand."""
    import openvino as ov
    import openvino.opset16 as ops

    x = ops.parameter([batch, anchors, 4 + classes], np.float32, name="images")
    split = ops.variadic_split(x, 2, [4, classes])
    results = []
    for k, name in enumerate(("boxes", "scores")):
        split.output(k).get_tensor().set_names({name})
        results.append(ops.result(split.output(k)))
    return ov.Model(results, [x], "split")


class _Split(torch.nn.Module):
    """[1, A, 4 + C] -> (boxes, scores): the torch twin of split_network, for GraphNMS to wrap."""

    def forward(self, x):
        return x[..., :4], x[..., 4:]


def hand_detector_outputs(anchors: int, classes: int, seed: int, zero_candidates: bool = False) -> np.ndarray:
    """[1, A, 4 + C]: boxes in a few overlapping clusters, negative coordinates among them; scores mostly low."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 100, (6, 2))[rng.integers(0, 6, anchors)] + rng.normal(0, 4, (anchors, 2))
    half = rng.uniform(4, 20, (anchors, 2))
    scores = rng.uniform(0, 1, (anchors, classes)) ** 3
    if zero_candidates:
        scores *= 0.05  # none above SCORE_THRESHOLD
    return np.concatenate([centres - half, centres + half, scores], 1)[None].astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("anchors", [120, 400])  # 600 (location, class) pairs: all are top-k; 2000: the top 1000
def test_appended_nms_matches_graph_nms_and_host_nms_on_hand_made_outputs(anchors, tmp_path):
    """On outputs chosen by hand, zero candidates included: the appended ops keep what export/onnx.py's GraphNMS
    (exported to ONNX and converted, as model.nms.onnx is) and host NMS keep. The dynamic batch becomes 1."""
    import openvino as ov

    from deploy.postprocess import select_detections
    from deploy.predict import GRAPH_NMS_OUTPUTS
    from export.onnx import GraphNMS
    from export.openvino_int8 import openvino_nms_ir

    classes = 5
    ov.save_model(split_network(anchors, classes), str(tmp_path / "split.xml"))
    core = ov.Core()
    appended = core.read_model(str(openvino_nms_ir(tmp_path / "split.xml", tmp_path / "split.nms.xml")))
    assert appended.inputs[0].get_partial_shape() == ov.PartialShape([1, anchors, 4 + classes])
    reference = tmp_path / "graph_nms.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings, as export_onnx
        warnings.simplefilter("ignore")
        torch.onnx.export(GraphNMS(_Split()).eval(), (torch.zeros(1, anchors, 4 + classes),), str(reference),
                          dynamo=False, opset_version=17, input_names=["images"], output_names=list(GRAPH_NMS_OUTPUTS),
                          dynamic_axes={o: {0: "detections"} for o in GRAPH_NMS_OUTPUTS})
    ours, theirs = (core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                    for m in (appended, ov.convert_model(str(reference))))
    kept = []
    for seed, zero in ((0, False), (1, False), (2, True)):
        x = hand_detector_outputs(anchors, classes, seed, zero)
        got = [ours(x)[name] for name in GRAPH_NMS_OUTPUTS]
        assert (got[0].dtype, got[1].dtype, got[2].dtype) == (np.float32, np.float32, np.int64)
        for ref in ([theirs(x)[name] for name in GRAPH_NMS_OUTPUTS], select_detections(x[0, :, :4], x[0, :, 4:])):
            assert got[2].tolist() == ref[2].tolist()
            np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
            np.testing.assert_allclose(got[0], ref[0], atol=1e-3)
        kept.append(len(got[2]))
    assert kept[0] > 10 and kept[1] > 10 and kept[2] == 0 and got[0].shape == (0, 4)


def test_nms_is_not_appended_to_a_batch_of_several(tmp_path):
    import openvino as ov

    from export.openvino_int8 import openvino_nms_ir

    ov.save_model(split_network(10, 3, batch=2), str(tmp_path / "b2.xml"))
    with pytest.raises(InputError, match=r"b2.xml: batch 2; NMS in the graph needs a batch-1 \(or dynamic batch\) IR"):
        openvino_nms_ir(tmp_path / "b2.xml", tmp_path / "b2.nms.xml")
    assert not (tmp_path / "b2.nms.xml").exists()
