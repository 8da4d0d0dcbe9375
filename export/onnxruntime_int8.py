"""ONNX Runtime INT8 post-training quantization: static QDQ, per-channel symmetric weights, symmetric
activations so TensorRT takes the same file as explicit quantization (tensorrt=True: the form its
parser takes), or uint8 activations for ONNX Runtime CPU's own fast path.

The decode (DFL softmax and integral, anchor arithmetic, sigmoid, the concatenations) stays in float:
it is everything after the last convolutions, found from the graph rather than from names. When INT8
loses more than the gate allows, the most sensitive convolutions go back to float, fewest first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from deploy.errors import InputError
from deploy.files import atomic_path
from export.calibration import calibration_batches, tail_nodes

SENSITIVITY_IMAGES = 32  # calibration images the per-layer sensitivity is measured on
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


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
    ranked = [(measured_at[t], float(e["xmodel_err"])) for t, e in errors.items()
              if t in measured_at and "xmodel_err" in e]
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
                               evaluate: Callable[[Path], float], float_ap: float, max_drop: float,
                               max_layers: int = 32, method: str = "minmax", symmetric: bool = False,
                               tensorrt: bool = False) -> dict[str, Any]:
    """Requantize `out` with its most sensitive convolutions (lowest SQNR on the first calibration images)
    kept in float, the fewest that bring evaluate(model file) -> AP within max_drop points of float_ap.
    Returns what to record: the layers kept in float with their SQNR, and every trial of the search."""
    ranked = onnx_conv_sensitivity(prepared, out, paths[:SENSITIVITY_IMAGES], input_size)
    print(f"[quantize] {Path(out).name} over the gate: searching among {len(ranked)} convolutions", flush=True)

    def trial(kept: list[str]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            ap = evaluate(quantize_onnxruntime(prepared, Path(tmp) / "trial.onnx", paths, input_size, kept, method,
                                               symmetric, tensorrt))
        print(f"[quantize]   {len(kept)} layers in float: AP {ap:.2f}", flush=True)
        return ap

    kept, trials = keep_float_until([name for name, _ in ranked], trial, float_ap, max_drop, max_layers)
    if kept:
        quantize_onnxruntime(prepared, out, paths, input_size, kept, method, symmetric, tensorrt)
    sqnr = dict(ranked)
    return {"kept_float": [{"layer": n, "sqnr_db": round(sqnr[n], 2)} for n in kept], "search": trials}
