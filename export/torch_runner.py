"""The PyTorch model behind the deploy/ runner interface, so the FP32 reference is measured by the same
code as every artifact."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export.onnx import ExportModel


class TorchRunner:
    backend = "pytorch"
    precision = executed_precision = "fp32"

    def __init__(self, detector: nn.Module, path: str, batch: int = 1, threads: int = 0):
        self.model = ExportModel(detector).eval()
        self.path, self.batch = str(path), batch
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.execution = {"threads": self.threads}
        self.precision_warning = None

    @torch.no_grad()
    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        boxes, scores = self.model(torch.from_numpy(images))
        return {"boxes": boxes.numpy(), "scores": scores.numpy()}
