"""Quantization-aware fine-tuning of a trained student with NVIDIA ModelOpt's PyTorch quantization.

The student's BatchNorms are folded into their convolutions first, so QAT trains the very weights the
post-training path quantizes (the ONNX export folds them too). ModelOpt then puts a fake quantizer on
every convolution's input (int8, per tensor, symmetric: TensorRT's activations) and weight (int8, per
output channel, symmetric); everything else, the decode included, stays float as in the PTQ files.
Scales are calibrated once (max over training images) and then stay fixed while the weights fine-tune
through the straight-through estimator. The model exports to ONNX QuantizeLinear/DequantizeLinear
pairs (zero points 0) that TensorRT builds as explicit quantization and OpenVINO reads as INT8.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from deploy.errors import InputError

# Folding must not change what the model computes beyond float rounding (checked on a random input).
FOLD_ATOL = 1e-3
# The smallest scale range (amax) a quantizer keeps. A channel all zeros in calibration (a BatchNorm that
# folded to zero weights) calibrates to amax 0, which exports as scale 0, and TensorRT's parser refuses
# any non-positive scale; zeros quantize to zero under any positive scale.
MIN_AMAX = 1e-6




def fold_batchnorm(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Fold every BatchNorm that directly consumes a convolution's output into that convolution, in place
    (eval statistics); return how many. Pairs are found by running the model, not from names, and the
    result is checked against the unfolded model's outputs."""
    model.eval()
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(name: str):  # holds the tensors, so that no id() is reused while pairs are matched
        return lambda module, inputs, output: calls.append((name, module, inputs[0], output))

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    x = torch.randn(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    for h in handles:
        h.remove()
    conv_by_output = {id(out): module for _, module, _, out in calls if isinstance(module, nn.Conv2d)}
    pairs = [(conv_by_output[id(inp)], name, module) for name, module, inp, _ in calls
             if isinstance(module, nn.BatchNorm2d) and id(inp) in conv_by_output]
    calls.clear()
    for conv, name, bn in pairs:
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        # timm's BatchNormAct2d carries the activation after the norm: keep it
        after = nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") and hasattr(bn, "drop") else nn.Identity()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, after)
    with torch.no_grad():
        now = model(x)
    worst = max(float((now[k] - before[k]).abs().max()) for k in before if before[k].is_floating_point())
    if worst > FOLD_ATOL:
        raise RuntimeError(f"folding {len(pairs)} BatchNorms changed the outputs by {worst:.2e} (> {FOLD_ATOL})")
    return len(pairs)


def quantization_config() -> dict[str, Any]:
    """ModelOpt's INT8 preset: per-channel symmetric int8 weights (axis 0), per-tensor symmetric int8
    inputs, max calibration; its disabled names target language models and match nothing here."""
    import modelopt.torch.quantization as mtq

    return copy.deepcopy(mtq.INT8_DEFAULT_CFG)


def insert_quantizers(model: nn.Module, forward_loop: Callable[[nn.Module], None] | None) -> nn.Module:
    """Fake quantizers on every convolution (in place); with forward_loop, calibrate the input scales on
    what it feeds (the weight scales come from the weights either way)."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise InputError(f"QAT needs NVIDIA ModelOpt: pip install nvidia-modelopt ({e})") from e
    model.eval()
    with torch.no_grad():
        model = mtq.quantize(model, quantization_config(), forward_loop)
        for quantizer in quantizers(model).values():
            if quantizer.amax is not None:
                quantizer.amax = quantizer.amax.clamp(min=MIN_AMAX)
    return model


def calibration_loop(batches: Iterable[torch.Tensor]) -> Callable[[nn.Module], None]:
    def loop(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for images in batches:
            model(images.to(device))
    return loop


def restore_scales(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every quantizer the scale (amax) a saved state holds, so the state loads without calibrating."""
    for key, value in state.items():
        if key.endswith("._amax"):
            try:
                quantizer = model.get_submodule(key[: -len("._amax")])
            except AttributeError:
                continue  # load_model_state names the key
            quantizer.amax = value


def quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """The enabled ModelOpt quantizers by module name."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return {n: m for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled}

