"""Runtime runners with one interface: `open_runner(path)` picks the runtime by file suffix.

A runner has `inputs` and `outputs` ({name: shape}, -1 for a dynamic axis), `batch` (the fixed batch
size, or None when dynamic), `precision` (what the artifact is), `executed_precision` (what the
runtime reports it runs: read back after loading), `execution` (the details behind it: kernels,
threads), `precision_warning` (a line when the two disagree, else None), `backend`, and
`infer(images) -> {name: array}` on a preprocessed float32 [N, 3, H, W] batch. The runtime library is
imported when a runner is opened, so a device needs only the runtime it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.errors import InputError

BACKENDS = {".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt"}


def backend_for(path: str, backend: str | None = None) -> str:
    """The runtime for an artifact: the override, or the one its suffix implies."""
    if backend:
        if backend not in set(BACKENDS.values()):
            raise InputError(f"--backend {backend}: unknown; valid: {', '.join(sorted(set(BACKENDS.values())))}")
        return backend
    suffix = Path(path).suffix.lower()
    if suffix not in BACKENDS:
        raise InputError(f"{path}: cannot tell the runtime from the suffix '{suffix}' "
                         f"(known: {', '.join(BACKENDS)}); pass --backend")
    return BACKENDS[suffix]


def check_artifact_file(path: str, backend: str | None = None) -> str:
    """The runtime for a model file that exists; one line naming the path when it is missing, a directory, or
    of a suffix no runtime takes. Returns the runtime's name."""
    if Path(path).is_dir():
        inside = sorted(f.name for f in Path(path).iterdir() if f.suffix.lower() in BACKENDS)
        holds = f"it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}" if inside else "it holds none"
        raise InputError(f"{path}: is a directory; give the model file: {', '.join(BACKENDS)} (an OpenVINO .xml with "
                         f"its .bin beside it) ({holds})")
    if not Path(path).is_file():
        raise InputError(f"artifact not found: {path}")
    return backend_for(path, backend)


def open_runner(path: str, backend: str | None = None, **options: Any):
    """Load an artifact into its runtime's runner; options go to that runner (threads, device, ...)."""
    name = check_artifact_file(path, backend)
    if name == "onnxruntime":
        from deploy.runtimes.onnxruntime import OrtRunner
        return OrtRunner(path, **options)
    if name == "openvino":
        from deploy.runtimes.openvino import OpenVinoRunner
        return OpenVinoRunner(path, **options)
    from deploy.runtimes.tensorrt import TensorRTRunner
    return TensorRTRunner(path, **options)


def input_size(runner: Any) -> tuple[int, int]:
    """(height, width) of the model input: [N, 3, H, W] float, or [N, H, W, 3] for a uint8-input model."""
    shape = runner.inputs[runner.input_name]
    return (shape[1], shape[2]) if getattr(runner, "input_uint8", False) else (shape[2], shape[3])


def check_detector(runner: Any) -> None:
    """Refuse, in one line naming the file, an artifact that is not an edgekd detector: the exported
    model contract is one image input, float [N, 3, H, W] (or uint8 [N, H, W, 3] when exported with a
    uint8 input), and outputs `boxes` and `scores`."""
    shape = runner.inputs[runner.input_name]
    channels = (shape[3] if getattr(runner, "input_uint8", False) and len(shape) == 4
                else shape[1] if len(shape) > 1 else None)
    if len(runner.inputs) != 1 or len(shape) != 4 or channels != 3:
        found = ", ".join(f"'{n}' {s}" for n, s in runner.inputs.items())
        raise InputError(f"{runner.path}: input {found}; an edgekd detector takes one image input [N, 3, H, W] "
                         "(or uint8 [N, H, W, 3])")
    if (all(n in runner.outputs for n in ("det_boxes", "det_scores", "det_labels"))
            or "num_detections" in runner.outputs):
        return  # NMS in the graph (export.nms: graph) or in the engine (EfficientNMS_TRT)
    missing = [n for n in ("boxes", "scores") if n not in runner.outputs]
    if missing:
        raise InputError(f"{runner.path}: no '{missing[0]}' output (it has {', '.join(runner.outputs)}); an edgekd "
                         "detector outputs 'boxes' [N, A, 4] and 'scores' [N, A, C]")
