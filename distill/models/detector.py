"""A dense detector: backbone -> FPN (torchvision) -> a dense head (GFL, RetinaNet, FCOS, ATSS), built
from a ModelConfig."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from deploy.errors import InputError
from distill.checkpoint import load_checkpoint, load_model_state
from distill.models.backbones import build_backbone, freeze_batchnorm
from distill.models.config import ModelConfig
from distill.models.heads import build_head


class P6P7WithoutReLU(LastLevelP6P7):
    """P6 = conv(P5), P7 = conv(P6): mmdetection's FPN with add_extra_convs='on_output' and
    relu_before_extra_convs=False (its GFL, ATSS and RetinaNet configs), where torchvision applies a
    ReLU before P7. Same modules and keys as LastLevelP6P7."""

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]):
        p6 = self.p6(p[-1] if self.use_P5 else c[-1])
        return [*p, p6, self.p7(p6)], [*names, "p6", "p7"]


class Detector(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained)
        extra = None
        if cfg.extra_levels == 2:
            p6p7 = LastLevelP6P7 if cfg.relu_before_p7 else P6P7WithoutReLU
            extra = p6p7(cfg.fpn_channels, cfg.fpn_channels)
        self.fpn = FeaturePyramidNetwork(self.backbone.channels, cfg.fpn_channels, extra_blocks=extra)
        self.strides = tuple(self.backbone.strides) + ((64, 128) if extra else ())
        self.head = build_head(cfg, num_classes, cfg.fpn_channels, self.strides)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] (deploy/preprocess.py normalisation) -> raw head outputs (see heads/)."""
        return self.head(self.features(images))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The FPN's maps, finest first: what the head reads."""
        feats = self.backbone(images)
        return list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs -> (boxes [N, A, 4] xyxy input pixels, scores [N, A, C] probabilities)."""
        return self.head.decode(outputs)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        if mode and self.cfg.freeze_bn:
            freeze_batchnorm(self.backbone)
        return self


def build_detector(cfg: ModelConfig, num_classes: int, seed: int | None = None) -> Detector:
    """A detector for num_classes classes from its config; with a seed, its random layers (FPN, head)
    are initialised the same whatever the process drew from the RNG before."""
    if seed is not None:
        torch.manual_seed(seed)
    return Detector(cfg, num_classes)


def load_detector(path: str | Path):
    """(detector in eval mode, its classes, the checkpoint) rebuilt from a checkpoint's own model config."""
    state = load_checkpoint(path)
    if "qat" in state:
        raise InputError(f"{path}: a QAT checkpoint (BatchNorms folded, fake quantizers in), not a plain detector: "
                         "its deployable form is the qat stage's model.qat.onnx")
    if not isinstance(state.get("config"), dict) or not state.get("classes"):
        raise InputError(f"{path}: the checkpoint holds no model config or classes (not written by edgekd's trainer)")
    known = {f for f in ModelConfig.__dataclass_fields__}
    unknown = sorted(set(state["config"]) - known)
    if unknown:
        raise InputError(f"{path}: its model config has keys this version does not know: {', '.join(unknown)}")
    model = build_detector(ModelConfig(**{**state["config"], "pretrained": "none"}), num_classes=len(state["classes"]))
    load_model_state(model, state["model"], str(path))
    return model.eval(), list(state["classes"]), state
