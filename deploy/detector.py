"""The two lines an application needs: open an artifact, call it on an image.

    from deploy.detector import open_detector
    boxes, scores, labels = open_detector("model_int8.uint8.nms.xml")(image)  # image: HWC uint8 RGB

Any edgekd artifact (ONNX, OpenVINO IR, TensorRT engine; float or uint8 input; NMS on the host or in the
graph) through the same preprocessing and post-processing as the evaluator and the benchmark.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import numpy as np

from deploy.predict import image_detections, runner_infer
from deploy.preprocess import model_input
from deploy.runtimes import check_detector, input_size, open_runner

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 4] xyxy image pixels, scores [K], labels [K]


def open_detector(path: str, **options: Any) -> Callable[[np.ndarray], Detections]:
    """A function from one decoded image (HWC uint8 RGB, any size) to its detections; `options` go to the
    runtime (threads, device, ...). Labels are the model's class indices (0-based, the export's classes)."""
    runner = open_runner(str(path), **options)
    check_detector(runner)
    infer, size, uint8 = runner_infer(runner), input_size(runner), getattr(runner, "input_uint8", False)

    def detect(image: np.ndarray) -> Detections:
        x, letterbox = model_input(image, size, uint8)
        return image_detections(infer(x[None]), 0, letterbox)

    return detect
