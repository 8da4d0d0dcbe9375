"""metrics.json, in the one layout every stage (and `python -m deploy.evaluate --out`) writes it:

    {"artifacts": {name: measurement, ...}, "reference": {name: measurement, ...}, <the stage's own keys>}

A measurement is the evaluator's dict (AP, AP50, ... as COCO fractions, per_class_AP, ...) with what the
writer knows of the artifact besides (its path, runtime, precision, latency). `artifacts` holds what the
stage made: a training stage's checkpoint as `pytorch`, export's ONNX files, quantize's and qat's INT8
files. `reference` holds what they are compared against, by the same names (export: the checkpoint in
PyTorch; quantize and qat: that and ONNX Runtime FP32), possibly AP alone. A reader never needs to know
which stage wrote a file.

Run folders written before this layout are read into it (`normalise`): a training stage's flat measurement,
export's {"pytorch", "onnxruntime_fp32", ...}, quantize's and qat's {"reference": {"pytorch_AP", "fp32_AP"}}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from deploy.files import PathLike, write_json

NAME = "metrics.json"
CHECKPOINT = "pytorch"  # a training stage's one artifact, and export's reference
# export's artifacts in the layout before this one, each a top-level key beside "pytorch"
_OLD_EXPORT = ("onnxruntime_fp32", "onnxruntime_fp32_uint8", "onnxruntime_fp32_nms")


def layout(artifacts: Mapping[str, dict[str, Any]], reference: Mapping[str, dict[str, Any]] | None = None,
           **extra: Any) -> dict[str, Any]:
    """A metrics.json's content: the artifacts, what they are compared against, and the stage's own keys."""
    return {"artifacts": dict(artifacts), "reference": dict(reference or {}), **extra}


def write(out_dir: PathLike, artifacts: Mapping[str, dict[str, Any]],
          reference: Mapping[str, dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """Write <out_dir>/metrics.json atomically; return its content."""
    content = layout(artifacts, reference, **extra)
    write_json(os.path.join(os.fspath(out_dir), NAME), content)
    return content


def normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.json's content in this layout, whichever layout it was written in."""
    data = dict(data)
    if "AP" in data and "artifacts" not in data:  # a flat measurement (AP None: a split without boxes)
        name = f"{data['backend']}_{data.get('precision', 'fp32')}" if "backend" in data else CHECKPOINT
        return layout({name: data})
    if "artifacts" not in data and any(k in data for k in _OLD_EXPORT):  # export, before this layout
        artifacts = {k: data.pop(k) for k in _OLD_EXPORT if k in data}
        reference = {CHECKPOINT: data.pop(CHECKPOINT)} if CHECKPOINT in data else {}
        return layout(artifacts, reference, **data)
    reference = data.pop("reference", None) or {}
    if "pytorch_AP" in reference or "fp32_AP" in reference:  # quantize and qat, before this layout
        reference = {name: {"AP": reference[old]} for name, old in
                     (("pytorch", "pytorch_AP"), ("onnxruntime_fp32", "fp32_AP")) if old in reference}
    return layout(data.pop("artifacts", None) or {}, reference, **data)


def read(path: PathLike) -> dict[str, Any]:
    """A metrics.json in this layout; {} when it is missing or unreadable (the caller says what that means)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return normalise(data) if isinstance(data, dict) else {}


def measurement(data: Mapping[str, Any], name: str = CHECKPOINT) -> dict[str, Any]:
    """An artifact's measurement, else the reference's of that name; {} when the file has neither."""
    for side in ("artifacts", "reference"):
        if name in (data.get(side) or {}):
            return dict(data[side][name])
    return {}
