"""Whether a Q/DQ ONNX has the form TensorRT's ONNX parser takes for explicit INT8 quantization, checked
without TensorRT: by `make quantize` on the TensorRT file it writes, and by the engine builder (on the
device too) before it parses.

The rules, and where they come from:
- TensorRT quantizes symmetrically: INT8 activations in [-128, 127], weights in [-127, 127], and every
  zero point 0 ("Working with Quantized Types", TensorRT developer guide, 8.5 to 10.x). An absent zero
  point means uint8 in ONNX (QuantizeLinear, opset 13), so it must be present, int8 and all zeros.
- Every DequantizeLinear reads a QuantizeLinear's output. Up to TensorRT 9.x onnx-tensorrt takes a
  DequantizeLinear only on float ("activation") inputs; a stored int8 weight or int32 bias behind a
  lone DequantizeLinear fails with "only activation types allowed as input to this layer"
  (onnx/onnx-tensorrt#850, microsoft/onnxruntime#14229). ONNX Runtime writes that form by default;
  `extra_options` QuantizeBias=False and AddQDQPairToWeight=True write the Q/DQ pair on float weights
  and leave biases float, as TensorRT's explicit-quantization examples do.
- Scales are constants and positive (onnx-tensorrt's QuantDequantLinearHelper: "Scale coefficients
  must all be positive"; a channel all zeros in calibration gives a zero scale), and not subnormal
  (flushed to 0 where denormals are); activations are quantized per tensor (a scalar scale); weights per tensor or
  per output channel, i.e. axis 0 of a Conv weight (onnx-tensorrt's QuantizeLinear import and the
  guide's "Q/DQ Layer-Placement Recommendations").
- A Conv bias stays float (TensorRT quantizes it itself from the input and weight scales).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.errors import InputError

QDQ = ("QuantizeLinear", "DequantizeLinear")
FIX = ("quantize with ONNX Runtime's extra_options QuantizeBias=False, AddQDQPairToWeight=True (the quantize stage's "
       "onnxruntime_int8_trt)")


def _attribute(node: Any, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def tensorrt_qdq_problems(model: Any) -> list[str]:
    """Every way the ONNX ModelProto breaks the rules above, one line each naming the node; [] when
    TensorRT can take it as explicit quantization. A model without Q/DQ nodes is one problem."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    for node in graph.node:  # Constant nodes are stored tensors too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            stored[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def array(name: str) -> Any | None:
        return numpy_helper.to_array(stored[name]) if name in stored else None

    problems: list[str] = []
    nodes = [n for n in graph.node if n.op_type in QDQ]
    if not nodes:
        return ["it has no QuantizeLinear / DequantizeLinear nodes (not an explicitly quantized model)"]
    for node in nodes:
        label = f"{node.op_type} '{node.name or node.output[0]}'"
        if node.op_type == "DequantizeLinear":
            source = producer.get(node.input[0])
            if source is None or source.op_type != "QuantizeLinear":
                data = array(node.input[0])
                kind = f"a stored {data.dtype} tensor" if data is not None else "not a QuantizeLinear's output"
                what = "a quantized bias" if data is not None and data.dtype == np.int32 else kind
                problems.append(f"{label}: its input '{node.input[0]}' is {what}; TensorRT's parser takes a "
                                f"DequantizeLinear only after a QuantizeLinear ('only activation types allowed as "
                                f"input to this layer'): {FIX}")
                continue
        scale = array(node.input[1])
        if scale is None:
            problems.append(f"{label}: its scale '{node.input[1]}' is computed, not a constant")
            continue
        if not np.all(scale > 0):
            problems.append(f"{label}: {int(np.sum(~(scale > 0)))} of its {scale.size} scales are not positive "
                            "(a channel or tensor that was all zeros in calibration); TensorRT's parser refuses "
                            "it ('Scale coefficients must all be positive')")
            continue
        if scale.dtype == np.float32 and np.any(scale < np.finfo(np.float32).tiny):
            problems.append(f"{label}: {int(np.sum(scale < np.finfo(np.float32).tiny))} of its {scale.size} scales are "
                            "subnormal floats, which a GPU flushing denormals reads as 0")
            continue
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"{label}: no zero point, which means uint8 in ONNX; TensorRT needs int8 with zero point 0")
            continue
        zero = array(node.input[2])
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            found = "computed" if zero is None else f"{zero.dtype}, values {sorted(set(zero.ravel().tolist()))[:3]}"
            problems.append(f"{label}: zero point '{node.input[2]}' is {found}; TensorRT quantizes symmetrically "
                            "(int8, zero point 0)")
            continue
        # Per-tensor or per-channel: decided on the Q of a pair, whose input is the float tensor itself.
        if node.op_type != "QuantizeLinear" or scale.size == 1:
            continue
        weight = array(node.input[0])
        if weight is None:
            problems.append(f"{label}: an activation quantized per channel ({scale.size} scales); TensorRT takes "
                            "one scale per activation tensor")
            continue
        axis = _attribute(node, "axis", 1)
        axis = axis + weight.ndim if axis < 0 else axis
        dq_users = [u for dq in consumers.get(node.output[0], []) for u in consumers.get(dq.output[0], [])]
        if any(u.op_type == "Conv" for u in dq_users) and axis != 0:
            problems.append(f"{label}: a Conv weight quantized along axis {axis}; TensorRT takes per-channel "
                            "weight scales along the output channels (axis 0)")
        elif weight.shape[axis] != scale.size:
            problems.append(f"{label}: {scale.size} scales for axis {axis} of size {weight.shape[axis]}")
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            source = producer.get(node.input[2])
            if source is not None and source.op_type in QDQ:
                problems.append(f"Conv '{node.name}': its bias is quantized; TensorRT wants it float: {FIX}")
    return problems


def check_tensorrt_qdq(path: str | Path) -> None:
    """One InputError naming the file, the first node at fault and how many others there are, unless
    TensorRT can build the file as explicit INT8 quantization. Needs the onnx package."""
    try:
        import onnx
    except ImportError as exc:
        raise InputError(f"{path}: checking a Q/DQ model needs the onnx package (pip install onnx)") from exc
    problems = tensorrt_qdq_problems(onnx.load(str(path), load_external_data=False))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{path}: not a Q/DQ file TensorRT can build: {problems[0]}{more}")


def unquantized_convolutions(model: Any) -> list[str]:
    """The Conv nodes of an ONNX ModelProto whose input or weight does not come through a
    DequantizeLinear (these run in float); [] when every convolution is quantized."""
    producer = {out: node for node in model.graph.node for out in node.output}

    def dequantized(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    return [node.name or node.output[0] for node in model.graph.node
            if node.op_type == "Conv" and not (dequantized(node.input[0]) and dequantized(node.input[1]))]
