"""Shape probes that leave a model exactly as they found it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def probe(model: nn.Module, x: torch.Tensor) -> Any:
    """model(x) under no_grad in eval mode, each submodule's train/eval flag restored after. A probe in
    train mode would move every unfrozen BatchNorm's running statistics toward those of x."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for m, mode in modes:
            m.training = mode
