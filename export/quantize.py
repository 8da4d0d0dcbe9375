"""INT8 post-training quantization and OpenVINO IR: ONNX Runtime QDQ (static, per-channel symmetric
weights, symmetric activations so TensorRT takes the same file as explicit quantization), OpenVINO
FP32/FP16 IR and NNCF INT8, and that INT8 IR with export.nms: graph's NMS appended (calibrated once).

The decode (DFL softmax and integral, anchor arithmetic, sigmoid, the concatenations) stays in float:
it is everything after the last convolutions, found from the graph rather than from names. When INT8
loses more than the gate allows, the most sensitive convolutions go back to float, fewest first.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from deploy.coco import CocoDataset
from deploy.errors import InputError
from deploy.files import atomic_path
from deploy.postprocess import IOU_THRESHOLD, MAX_DETECTIONS, PRE_NMS_TOPK, SCORE_THRESHOLD
from deploy.predict import GRAPH_NMS_OUTPUTS
from deploy.preprocess import MEAN, STD, load_image, preprocess

MIN_CALIBRATION_IMAGES = 8
SENSITIVITY_IMAGES = 32  # calibration images the per-layer sensitivity is measured on
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# The inference precision (OpenVINO INFERENCE_PRECISION_HINT) each OpenVINO artifact compiles with unless
# quantize.inference_precision says otherwise; openvino_bf16 is the FP32 IR run in bf16, no file of its own.
OPENVINO_INFERENCE = {"openvino_fp32": "f32", "openvino_bf16": "bf16", "openvino_fp16": "f32", "openvino_int8": "f32",
                      "openvino_int8_uint8": "f32", "openvino_int8_nms": "f32", "openvino_int8_uint8_nms": "f32"}




def calibration_paths(train: CocoDataset, count: int, seed: int = 0) -> list[str]:
    """`count` training image paths drawn at random (seeded): calibration never sees val."""
    if count < MIN_CALIBRATION_IMAGES:
        raise InputError(f"quantize.calib_images={count}: at least {MIN_CALIBRATION_IMAGES} calibration images are needed")
    if len(train.images) < MIN_CALIBRATION_IMAGES:
        raise InputError(f"quantize: the train split ({train.image_dir}) holds {len(train.images)} images; calibration "
                         f"needs at least {MIN_CALIBRATION_IMAGES}")
    if len(train.images) < count:  # as NNCF's subset_size does: every image there is, and say so
        print(f"warning: quantize.calib_images={count}, but the train split ({train.image_dir}) holds only "
              f"{len(train.images)} images: calibrating on all of them", flush=True)
        count = len(train.images)
    picked = random.Random(seed).sample(range(len(train.images)), count)
    return [train.image_path(train.images[i]) for i in sorted(picked)]


def model_input(path: str, input_size: tuple[int, int]) -> np.ndarray:
    """One image file as a preprocessed [1, 3, H, W] float32 model input."""
    return preprocess(load_image(path), input_size)[0][None]


def calibration_batches(paths: Sequence[str], input_size: tuple[int, int]) -> Iterable[np.ndarray]:
    """Preprocessed [1, 3, H, W] float32 inputs, one per image, read lazily."""
    for path in paths:
        yield model_input(path, input_size)


# ---------------------------------------------------------------------------------------------------
# The decode: nodes from which no convolution is reachable


def tail_nodes(names: Sequence[str], consumers: dict[str, list[str]], is_conv: dict[str, bool]) -> set[str]:
    """Nodes (in topological order `names`) that reach no convolution downstream and are not one."""
    feeds_conv: dict[str, bool] = {}
    for name in reversed(names):
        # a consumer outside `names` (an op inside a subgraph, such as an If body) is no convolution of this graph
        feeds_conv[name] = any(is_conv.get(c, False) or feeds_conv.get(c, False) for c in consumers.get(name, []))
    return {n for n in names if not is_conv[n] and not feeds_conv[n]}


def onnx_decode_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the ONNX nodes after the last convolutions (the decode), in graph order."""
    nodes = list(model.graph.node)
    names = [n.name or f"#{i}" for i, n in enumerate(nodes)]
    producer = {out: name for name, n in zip(names, nodes) for out in n.output}
    consumers: dict[str, list[str]] = {}
    for name, n in zip(names, nodes):
        for tensor in n.input:
            if tensor in producer:
                consumers.setdefault(producer[tensor], []).append(name)
    tail = tail_nodes(names, consumers, {name: n.op_type == "Conv" for name, n in zip(names, nodes)})
    return [n for n in names if n in tail]


def openvino_decode_ops(model: Any) -> list[str]:
    """Friendly names of the OpenVINO ops after the last convolutions (parameters and constants aside)."""
    ops = list(model.get_ordered_ops())
    names = [op.get_friendly_name() for op in ops]
    consumers = {op.get_friendly_name(): [t.get_node().get_friendly_name() for out in op.outputs()
                                          for t in out.get_target_inputs()] for op in ops}
    kinds = {op.get_friendly_name(): op.get_type_name() for op in ops}
    tail = tail_nodes(names, consumers, {n: kinds[n] in ("Convolution", "GroupConvolution") for n in names})
    return [n for n in names if n in tail and kinds[n] not in ("Parameter", "Constant", "Result")]


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime


def preprocess_for_quantization(fp32: str | Path, out: str | Path) -> Path:
    """ONNX Runtime's quant_pre_process (shape inference, graph optimisation) to `out`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with atomic_path(out) as tmp:
        quant_pre_process(str(fp32), str(tmp), skip_symbolic_shape=False)
    return Path(out)


class _Reader(CalibrationDataReader):
    """ONNX Runtime calibration data over image files."""

    def __init__(self, paths: Sequence[str], input_size: tuple[int, int], input_name: str = "images"):
        self.paths, self.input_size, self.input_name = paths, input_size, input_name
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(calibration_batches(self.paths, self.input_size))


def quantize_onnxruntime(prepared: str | Path, out: str | Path, paths: Sequence[str], input_size: tuple[int, int],
                         keep_float: Sequence[str] = (), method: str = "minmax", symmetric: bool = True,
                         tensorrt: bool = False) -> Path:
    """QDQ INT8 of a quant_pre_process'ed FP32 model; the decode and `keep_float` nodes stay float.
    symmetric: int8 activations with zero point 0; otherwise uint8 asymmetric activations (ONNX Runtime
    CPU's own fast path, a bit more accurate after ReLUs, whose outputs waste the sign bit of a
    symmetric int8). tensorrt: the form TensorRT's parser takes (deploy/qdq_check.py): symmetric, a
    Q/DQ pair on each float weight instead of stored int8 weights, and float biases."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in CALIBRATION_METHODS:
        raise InputError(f"quantize.calibration={method}: valid methods are {', '.join(CALIBRATION_METHODS)}")
    reader = _Reader(paths, input_size)
    symmetric = symmetric or tensorrt
    options = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if tensorrt:  # onnx-tensorrt refuses a DequantizeLinear on stored int8/int32 (onnx-tensorrt#850)
        options.update(QuantizeBias=False, AddQDQPairToWeight=True)
    exclude = onnx_decode_nodes(onnx.load(str(prepared))) + list(keep_float)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with atomic_path(out) as tmp:
        quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=calibrate,
                        extra_options=options)
        model = strip_decode_qdq(onnx.load(str(tmp)))
        onnx.save(model, str(tmp))
    return Path(out)


def strip_decode_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the Quantize/DequantizeLinear pairs that ONNX Runtime puts on the last convolutions'
    outputs (it quantizes Conv outputs by op type, whatever the consumer): the decode then reads the
    float logits, not logits rounded to 8 bits."""
    nodes = list(model.graph.node)
    tail = set(onnx_decode_nodes(model))
    by_output = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop, rename = set(), {}
    for dq in nodes:
        q = by_output.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        users = consumers.get(dq.output[0], [])
        if q is None or q.op_type != "QuantizeLinear" or not users:
            continue
        if all(u.name in tail and u.op_type not in ("QuantizeLinear", "DequantizeLinear") for u in users):
            rename[dq.output[0]] = q.input[0]
            drop.add(id(dq))
            if all(id(u) == id(dq) or u.op_type == "DequantizeLinear" and u.output[0] in rename
                   for u in consumers.get(q.output[0], [])):
                drop.add(id(q))
    kept = [n for n in nodes if id(n) not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for t in unused:  # the removed pairs' scales and zero points
        model.graph.initializer.remove(t)
    return model


def quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that take a DequantizeLinear output as input (run on INT8 data)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type != "QuantizeLinear" and any(i in dq_outputs for i in n.input)}


def onnx_conv_sensitivity(prepared: str | Path, qdq: str | Path, paths: Sequence[str],
                          input_size: tuple[int, int]) -> list[tuple[str, float]]:
    """Quantized Conv nodes, most sensitive first, with the SQNR (dB) of their output against the float
    model's on the calibration images (ONNX Runtime's qdq_loss_debug)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    # The quantizer folds a Conv's Clip/Relu into it: the QDQ Conv then writes the activation's tensor,
    # so the float model's activation outputs are saved too, to match by tensor name.
    saved = ["Conv", "Clip", "Relu"]
    qdq_model, float_model = onnx.load(str(qdq)), onnx.load(str(prepared))
    int8_convs = {n.name for n in qdq_model.graph.node if n.op_type == "Conv"} & quantized_nodes(qdq_model)
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in float_model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    measured_at = {}  # tensor -> the Conv it judges: after the Conv's ReLU/ReLU6 where it has one
    for n in float_model.graph.node:
        if n.name in int8_convs:
            after = users.get(n.output[0], [])
            activation = len(after) == 1 and after[0].op_type in ("Clip", "Relu")
            measured_at[after[0].output[0] if activation else n.output[0]] = n.name
    with tempfile.TemporaryDirectory() as tmp:
        float_aug, qdq_aug = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "qdq.onnx")
        modify_model_output_intermediate_tensors(str(prepared), float_aug, op_types_for_saving=saved)
        modify_model_output_intermediate_tensors(str(qdq), qdq_aug, op_types_for_saving=saved)
        float_act = collect_activations(float_aug, _Reader(paths, input_size))
        qdq_act = collect_activations(qdq_aug, _Reader(paths, input_size))
    errors = compute_activation_error(create_activation_matching(qdq_act, float_act))
    ranked = [(measured_at[t], float(e["xmodel_err"])) for t, e in errors.items() if t in measured_at and "xmodel_err" in e]
    return sorted(ranked, key=lambda item: item[1])  # low SQNR = most damaged


def keep_float_until(ranked: Sequence[str], evaluate: Callable[[list[str]], float], float_ap: float,
                     max_drop: float, max_layers: int = 32) -> tuple[list[str], list[dict[str, Any]]]:
    """Keep the most sensitive layers in float, doubling their number (1, 2, 4, ...) until the INT8 AP
    is within max_drop (AP points) of float_ap, then bisect down to the fewest that hold the gate.
    evaluate(kept) -> AP. Returns (kept layers, every trial as {kept, AP, drop})."""
    trials: list[dict[str, Any]] = []

    def trial(k: int) -> bool:
        ap = evaluate(list(ranked[:k]))
        trials.append({"kept": k, "layers": list(ranked[:k]), "AP": ap, "drop": float_ap - ap})
        return float_ap - ap <= max_drop

    low, high, k = 0, None, 1
    limit = min(max_layers, len(ranked))
    while k <= limit:
        if trial(k):
            high = k
            break
        low = k
        k = min(2 * k, limit) if k < limit else limit + 1
    if high is None:
        return [], trials
    while high - low > 1:  # trial(low) failed, trial(high) held
        mid = (low + high) // 2
        if trial(mid):
            high = mid
        else:
            low = mid
    return list(ranked[:high]), trials


def onnxruntime_accuracy_aware(prepared: str | Path, out: str | Path, paths: Sequence[str], input_size: tuple[int, int],
                               evaluate: Callable[[Path], float], float_ap: float, max_drop: float, max_layers: int = 32,
                               method: str = "minmax", symmetric: bool = False, tensorrt: bool = False) -> dict[str, Any]:
    """Requantize `out` with its most sensitive convolutions (lowest SQNR on the first calibration images)
    kept in float, the fewest that bring evaluate(model file) -> AP within max_drop points of float_ap.
    Returns what to record: the layers kept in float with their SQNR, and every trial of the search."""
    ranked = onnx_conv_sensitivity(prepared, out, paths[:SENSITIVITY_IMAGES], input_size)
    print(f"[quantize] {Path(out).name} over the gate: searching among {len(ranked)} convolutions", flush=True)

    def trial(kept: list[str]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            ap = evaluate(quantize_onnxruntime(prepared, Path(tmp) / "trial.onnx", paths, input_size, kept, method, symmetric,
                                               tensorrt))
        print(f"[quantize]   {len(kept)} layers in float: AP {ap:.2f}", flush=True)
        return ap

    kept, trials = keep_float_until([name for name, _ in ranked], trial, float_ap, max_drop, max_layers)
    if kept:
        quantize_onnxruntime(prepared, out, paths, input_size, kept, method, symmetric, tensorrt)
    sqnr = dict(ranked)
    return {"kept_float": [{"layer": n, "sqnr_db": round(sqnr[n], 2)} for n in kept], "search": trials}


# ---------------------------------------------------------------------------------------------------
# OpenVINO and NNCF


def save_ir(model: Any, out_xml: str | Path, fp16: bool) -> Path:
    """ov.save_model into a temporary `.*.tmp` folder, then the pair moved into place as a unit: the old
    .xml goes first and the new .xml comes last, so an .xml on disk always has its own .bin beside it
    (a kill in between leaves no .xml, and the stage redoes the IR). A folder left by a kill is removed
    when the stage resumes (pipeline.stage_state.remove_temporaries) and never recorded as an output."""
    import openvino as ov

    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_xml.stem}.", suffix=".tmp", dir=out_xml.parent))
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=fp16)
        out_xml.unlink(missing_ok=True)
        os.replace(tmp / "model.bin", out_xml.with_suffix(".bin"))
        os.replace(tmp / "model.xml", out_xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_xml


def openvino_uint8_input(xml: str | Path, out_xml: str | Path) -> Path:
    """An IR taking the letterboxed uint8 image [N, H, W, 3] instead of the normalised float batch: the
    cast, mean/std and layout added in front by OpenVINO's PrePostProcessor (they fuse into the first
    convolution's input), so the host only letterboxes. Weights stay as they are (FP32 or INT8)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    model = ov.Core().read_model(str(xml))
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(list(MEAN)).scale(list(STD))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    return save_ir(ppp.build(), out_xml, fp16=False)


def append_openvino_nms(model: Any, score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
                        max_detections: int = MAX_DETECTIONS, pre_nms_topk: int = PRE_NMS_TOPK) -> Any:
    """Replace a batch-1 model's `boxes` and `scores` outputs, in place, with export/onnx.py GraphNMS's steps
    in OpenVINO ops: outputs det_boxes [K, 4] f32, det_scores [K] f32, det_labels [K] i64 (GRAPH_NMS_OUTPUTS).
    Appended to an INT8 IR, it reuses that IR's calibration instead of quantizing model.nms.onnx again."""
    import openvino.opset16 as ops  # opset17 of OpenVINO 2026.4 holds only its new ops

    old = [model.output(name).get_node() for name in ("boxes", "scores")]
    boxes, scores = (result.input_value(0) for result in old)
    anchors, classes = scores.get_partial_shape()[1].get_length(), scores.get_partial_shape()[2].get_length()
    flat, all_boxes = ops.reshape(scores, [-1], False), ops.reshape(boxes, [-1, 4], False)
    # Sorted by score, so the candidates above the threshold are the same set as thresholding first.
    top = ops.topk(flat, np.int64(min(pre_nms_topk, anchors * classes)), axis=0, mode="max", sort="value",
                   index_element_type="i64")
    above = ops.squeeze(ops.non_zero(ops.greater(top.output(0), np.float32(score_threshold)), "i64"), [0])
    cand_scores, index = ops.gather(top.output(0), above, 0), ops.gather(top.output(1), above, 0)
    labels = ops.floor_mod(index, np.int64(classes))
    candidates = ops.gather(all_boxes, ops.divide(index, np.int64(classes)), 0)
    # Class-aware NMS as one NMS: each class shifted by more than the span of every decoded box (never an
    # empty set, negative coordinates included), so boxes of two classes never overlap.
    span = ops.add(ops.subtract(ops.reduce_max(all_boxes, [0, 1]), ops.reduce_min(all_boxes, [0, 1])), np.float32(1))
    shifted = ops.add(candidates, ops.unsqueeze(ops.multiply(ops.convert(labels, "f32"), span), [1]))
    # Greedy NMS selects in score order, so stopping at max_detections keeps GraphNMS's [:MAX_DETECTIONS].
    nms = ops.non_max_suppression(ops.unsqueeze(shifted, [0]), ops.unsqueeze(cand_scores, [0, 1]),
                                  np.int64(max_detections), np.float32(iou_threshold), box_encoding="corner",
                                  sort_result_descending=True, output_type="i64")
    kept = ops.gather(nms.output(0), np.int64(2), 1)  # [K, 3] (batch, class, box) -> box index
    outputs = []
    for name, source in zip(GRAPH_NMS_OUTPUTS, (candidates, cand_scores, labels)):
        node = ops.gather(source, kept, 0, name=name)
        node.output(0).get_tensor().set_names({name})
        outputs.append(ops.result(node, name=f"{name}/sink_port_0"))
    model.add_results(outputs)
    for result in old:
        model.remove_result(result)
    model.validate_nodes_and_infer_types()
    return model


def openvino_nms_ir(int8_xml: str | Path, out_xml: str | Path) -> Path:
    """The IR `int8_xml` with NMS in its graph (append_openvino_nms), batch 1 as model.nms.onnx: its
    convolutions and FakeQuantize ranges are the INT8 IR's, NNCF not run again."""
    import openvino as ov

    model = ov.Core().read_model(str(int8_xml))
    shape = model.inputs[0].get_partial_shape()
    if shape[0].is_static and shape[0].get_length() != 1:
        raise InputError(f"{int8_xml}: batch {shape[0].get_length()}; NMS in the graph needs a batch-1 (or dynamic "
                         "batch) IR")
    if shape[0].is_dynamic:  # a dynamic-batch export: the NMS IR takes one image, as model.nms.onnx does
        shape[0] = 1
        model.reshape({model.inputs[0]: shape})
    return save_ir(append_openvino_nms(model), out_xml, fp16=False)


def openvino_ir(onnx_path: str | Path, out_xml: str | Path, fp16: bool = False) -> Path:
    """ONNX -> OpenVINO IR, FP32 or with FP16-compressed weights."""
    import openvino as ov

    return save_ir(ov.convert_model(str(onnx_path)), out_xml, fp16)


def quantize_openvino(onnx_path: str | Path, out_xml: str | Path, paths: Sequence[str], input_size: tuple[int, int],
                      accuracy: AccuracyControl | None = None) -> Path:
    """NNCF INT8 of the FP32 model (symmetric, the decode in the ignored scope). With `accuracy`, NNCF's
    accuracy control reverts the most sensitive layers to float until the AP drop holds."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    scope = nncf.IgnoredScope(names=openvino_decode_ops(model), validate=False)
    calibration = nncf.Dataset(list(paths), lambda p: model_input(p, input_size))
    if accuracy is None:
        quantized = nncf.quantize(model, calibration, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=len(paths), ignored_scope=scope)
    else:
        # NNCF hands validate the raw items and feeds the model transform(item) when it ranks layers.
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, nncf.Dataset(list(accuracy.items), accuracy.transform),
            lambda compiled, items: (accuracy.validate(compiled, list(items)) / 100.0, None),
            max_drop=accuracy.max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(paths), ignored_scope=scope)
    return save_ir(quantized, out_xml, fp16=False)


@dataclass
class AccuracyControl:
    """What NNCF's accuracy control needs: val items, item -> model input, (compiled model, items) -> AP
    in points, and the allowed drop in points."""

    items: Sequence[Any]
    transform: Callable[[Any], np.ndarray]
    validate: Callable[[Any, list], float]
    max_drop: float


def openvino_float_convolutions(model: Any) -> list[str]:
    """Convolutions of an INT8 IR whose input is not fake-quantized (kept in float)."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            source = op.input_value(0).get_node()
            if source.get_type_name() != "FakeQuantize":
                out.append(op.get_friendly_name())
    return out


def openvino_accuracy_aware(fp32: str | Path, int8_xml: str | Path, paths: Sequence[str], input_size: tuple[int, int],
                            control: AccuracyControl) -> dict[str, Any]:
    """Rewrite int8_xml with NNCF's accuracy control (its validate gets NNCF's compiled model, not a file);
    return what to record: the convolutions it reverted to float beyond the default quantization's."""
    import openvino as ov

    default_float = set(openvino_float_convolutions(ov.Core().read_model(str(int8_xml))))
    quantize_openvino(fp32, int8_xml, paths, input_size, control)
    reverted = [n for n in openvino_float_convolutions(ov.Core().read_model(str(int8_xml))) if n not in default_float]
    return {"kept_float": [{"layer": n} for n in reverted], "accuracy_control": "nncf.quantize_with_accuracy_control"}
