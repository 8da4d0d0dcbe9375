"""PyTorch checkpoint -> ONNX following the exported-model contract (../shared/DESIGN.md): input
`images` float32 [N, 3, H, W] preprocessed as deploy/preprocess.py does; outputs `boxes` [N, A, 4]
xyxy in input pixels and `scores` [N, A, C] sigmoid probabilities, the decode inside the graph.
`make export` (pipeline/stages/export.py) runs it on the pipeline's student.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxslim
import torch
from torch import nn

from deploy.errors import GateError, InputError
from deploy.files import atomic_path, check_writable, sha256_file
from deploy.postprocess import IOU_THRESHOLD, MAX_DETECTIONS, PRE_NMS_TOPK, SCORE_THRESHOLD
from deploy.predict import GRAPH_NMS_OUTPUTS
from deploy.preprocess import MEAN, PAD_UINT8, STD
from deploy.runtimes.onnxruntime import OrtRunner

INPUT, OUTPUTS = "images", ("boxes", "scores")




class UInt8Input(nn.Module):
    """A detector behind a uint8 NHWC input: cast, layout and ImageNet normalisation as the first graph ops."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor):
        return self.model((images.permute(0, 3, 1, 2).float() - self.mean) / self.std)

    def decode(self, outputs):
        return self.model.decode(outputs)


class GraphNMS(nn.Module):
    """An ExportModel followed by host NMS's steps, for batch 1: candidates are the top PRE_NMS_TOPK
    (location, class) scores above SCORE_THRESHOLD (the same set as thresholding first), then class-aware
    NMS at IOU_THRESHOLD (one NonMaxSuppression over boxes offset by class), then the best MAX_DETECTIONS."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from torchvision.ops import nms

        boxes, scores = self.model(images)
        classes = scores.shape[2]
        flat = scores[0].flatten()
        top, index = flat.topk(min(PRE_NMS_TOPK, flat.shape[0]))
        above = top > SCORE_THRESHOLD
        top, index = top[above], index[above]
        candidates, labels = boxes[0][index // classes], index % classes
        # torchvision's batched_nms offsets boxes by class the same way, but it is scripted when traced
        # and exports an If (for zero candidates) whose body shares constants with the main graph, which
        # NNCF cannot quantize. The offset spans every decoded box (never an empty set), negative
        # coordinates included, so that boxes of two classes can never overlap.
        offsets = labels.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
        kept = nms(candidates + offsets[:, None], top, IOU_THRESHOLD)[:MAX_DETECTIONS]
        return candidates[kept], top[kept], labels[kept]


class ExportModel(nn.Module):
    """The detector with its decode: images -> (boxes xyxy input pixels, scores probabilities)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.decode(self.detector(images))


def metadata(classes: list[str], input_size: tuple[int, int], source: str | None,
             uint8_input: bool = False) -> dict[str, str]:
    """Model properties a device needs to use the file without our configs (all strings, as ONNX wants)."""
    preprocess = ({"resize": "letterbox, centred, bilinear", "color": "RGB", "dtype": "uint8", "layout": "NHWC",
                   "pad": list(PAD_UINT8), "in_graph": "cast, NHWC -> NCHW, (x - mean) / std", "mean": MEAN, "std": STD}
                  if uint8_input else
                  {"resize": "letterbox, centred, bilinear", "color": "RGB", "dtype": "float32", "layout": "NCHW",
                   "mean": MEAN, "std": STD, "pad": "mean colour (0)"})
    return {
        "edgekd.classes": json.dumps(classes),
        "edgekd.input_size": json.dumps(list(input_size)),  # [height, width]
        "edgekd.preprocess": json.dumps(preprocess),
        "edgekd.outputs": "boxes [N,A,4] xyxy input pixels; scores [N,A,C] sigmoid",
        "edgekd.source_sha256": sha256_file(source) if source else "",
        "edgekd.source": str(source or ""),
    }


def check_onnx(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """onnx.checker (full) and strict shape inference; a failure is an InputError naming the file."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InputError(f"{where}: the ONNX model fails the checker: {str(e).splitlines()[0][:300]}") from e


def export_onnx(detector: nn.Module, classes: list[str], out: str | Path, input_size: tuple[int, int],
                opset: int = 17, batch: int = 1, dynamic_batch: bool = False, slim: bool = True,
                source: str | None = None, uint8_input: bool = False, graph_nms: bool = False) -> Path:
    """Write the detector as ONNX to `out` (atomically: checked, slimmed and tagged, or nothing); with
    uint8_input its input is the letterboxed uint8 image [N, H, W, 3]; with graph_nms (batch 1) its
    outputs are the detections NMS kept (GRAPH_NMS_OUTPUTS)."""
    out = Path(out)
    check_writable(out.parent)
    if graph_nms and (batch != 1 or dynamic_batch):
        raise InputError(f"{out}: NMS in the graph exports batch 1 (export.batch 1, export.dynamic_batch false)")
    model = ExportModel(UInt8Input(detector) if uint8_input else detector).eval()
    outputs = OUTPUTS
    if graph_nms:
        model, outputs = GraphNMS(model).eval(), GRAPH_NMS_OUTPUTS
    dummy = torch.zeros(batch, *input_size, 3, dtype=torch.uint8) if uint8_input else torch.zeros(batch, 3, *input_size)
    dynamic = {INPUT: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}} if dynamic_batch else None
    if graph_nms:  # K, the number kept, depends on the image
        dynamic = {o: {0: "detections"} for o in outputs}
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # The TorchScript exporter: the dynamo one needs onnxscript, and this graph is static anyway.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=list(outputs), dynamic_axes=dynamic, do_constant_folding=True)
        proto = check_onnx(onnx.load(str(tmp)), str(out))
        if slim:
            proto = check_onnx(onnxslim.slim(proto), f"{out} (after onnxslim)")
        props = metadata(classes, input_size, source, uint8_input)
        if graph_nms:
            props["edgekd.outputs"] = ("det_boxes [K,4] xyxy input pixels; det_scores [K]; det_labels [K] (NMS in the "
                                       f"graph: score > {SCORE_THRESHOLD}, top {PRE_NMS_TOPK}, IoU {IOU_THRESHOLD}, "
                                       f"at most {MAX_DETECTIONS})")
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(tmp))
    return out


@torch.no_grad()
def parity(detector: nn.Module, onnx_path: str | Path, images: np.ndarray,
           batch: int | None = None) -> dict[str, float]:
    """Max abs difference of scores and of boxes (pixels) between ONNX Runtime and PyTorch on images
    [N, 3, H, W], run in chunks of the file's batch size."""
    runner = OrtRunner(str(onnx_path))
    size = runner.batch or batch or len(images)
    model = ExportModel(detector).eval()
    worst = {"scores_max_abs": 0.0, "boxes_max_abs": 0.0}
    for start in range(0, len(images) - size + 1, size):
        x = images[start : start + size]
        got = runner.infer(x)
        boxes, scores = model(torch.from_numpy(x))
        worst["scores_max_abs"] = max(worst["scores_max_abs"], float(np.abs(got["scores"] - scores.numpy()).max()))
        worst["boxes_max_abs"] = max(worst["boxes_max_abs"], float(np.abs(got["boxes"] - boxes.numpy()).max()))
    return worst


def check_parity(diff: dict[str, float], score_atol: float, box_atol: float, where: str) -> None:
    """Refuse an export whose outputs drift from PyTorch beyond the tolerances."""
    if diff["scores_max_abs"] > score_atol:
        raise GateError(f"{where}: ONNX Runtime vs PyTorch scores differ by {diff['scores_max_abs']:.2e} "
                        f"> max {score_atol:.0e} (export.score_atol)")
    if diff["boxes_max_abs"] > box_atol:
        raise GateError(f"{where}: ONNX Runtime vs PyTorch boxes differ by {diff['boxes_max_abs']:.2e} px "
                        f"> max {box_atol:.0e} px (export.box_atol)")
