"""OpenVINO IR: FP32 / FP16 conversion of the exported ONNX, NNCF INT8 (symmetric, the decode in its
ignored scope; with NNCF's accuracy control when INT8 loses more than the gate allows), the IR taking
the uint8 image, and the INT8 IR with export.nms: graph's NMS appended (calibrated once).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import InputError
from deploy.postprocess import IOU_THRESHOLD, MAX_DETECTIONS, PRE_NMS_TOPK, SCORE_THRESHOLD
from deploy.predict import GRAPH_NMS_OUTPUTS
from deploy.preprocess import MEAN, STD
from export.calibration import model_input, tail_nodes

# The inference precision (OpenVINO INFERENCE_PRECISION_HINT) each OpenVINO artifact compiles with unless
# quantize.inference_precision says otherwise; openvino_bf16 is the FP32 IR run in bf16, no file of its own.
OPENVINO_INFERENCE = {"openvino_fp32": "f32", "openvino_bf16": "bf16", "openvino_fp16": "f32", "openvino_int8": "f32",
                      "openvino_int8_uint8": "f32", "openvino_int8_nms": "f32", "openvino_int8_uint8_nms": "f32"}


def openvino_decode_ops(model: Any) -> list[str]:
    """Friendly names of the OpenVINO ops after the last convolutions (parameters and constants aside)."""
    ops = list(model.get_ordered_ops())
    names = [op.get_friendly_name() for op in ops]
    consumers = {op.get_friendly_name(): [t.get_node().get_friendly_name() for out in op.outputs()
                                          for t in out.get_target_inputs()] for op in ops}
    kinds = {op.get_friendly_name(): op.get_type_name() for op in ops}
    tail = tail_nodes(names, consumers, {n: kinds[n] in ("Convolution", "GroupConvolution") for n in names})
    return [n for n in names if n in tail and kinds[n] not in ("Parameter", "Constant", "Result")]


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
