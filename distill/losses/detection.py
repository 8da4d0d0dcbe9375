"""Each head's own training loss behind one call: (outputs, targets) -> (named terms, targets), so the
trainer and the distiller need not know which head they train."""

from __future__ import annotations

from collections.abc import Callable

import torch

from deploy.errors import InputError
from distill.losses import atss, fcos, gfl, retinanet
from distill.losses.targets import Targets

DEFAULT_WEIGHTS = {"gfl": (1.0, 0.25, 2.0), "retinanet": (1.0, 1.0), "fcos": (1.0, 1.0, 1.0), "atss": (1.0, 2.0, 1.0)}

HeadLoss = Callable[[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]], tuple[dict[str, torch.Tensor], Targets]]


def head_loss(cfg) -> HeadLoss:
    """The loss of the head a ModelConfig names, with its weights (cfg.loss_weights or the head's)."""
    weights = tuple(cfg.loss_weights) if cfg.loss_weights else DEFAULT_WEIGHTS[cfg.name]
    if len(weights) != len(DEFAULT_WEIGHTS[cfg.name]):
        raise InputError(f"model.loss_weights: {cfg.name} takes "
                         f"{len(DEFAULT_WEIGHTS[cfg.name])} weights, got {list(weights)}")

    def loss(outputs: dict[str, torch.Tensor],
             targets: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], Targets]:
        if cfg.name == "gfl":
            assigned = gfl.assign_targets(outputs, targets, cfg.anchor_scale, cfg.atss_topk)
            return gfl.gfl_loss(outputs, assigned, weights), assigned
        if cfg.name == "retinanet":
            assigned = retinanet.assign_targets(outputs, targets)
            return retinanet.retinanet_loss(outputs, assigned, weights, cfg.box_loss), assigned
        if cfg.name == "fcos":
            assigned = fcos.assign_targets(outputs, targets, cfg.center_sampling)
            return fcos.fcos_loss(outputs, assigned, weights), assigned
        assigned = atss.assign_targets(outputs, targets, cfg.atss_topk)
        return atss.atss_loss(outputs, assigned, weights), assigned

    return loss


def make_detection_loss(cfg) -> Callable[..., dict[str, torch.Tensor]]:
    """The trainer's loss function for training a detector alone: forward, assign, the head's terms."""
    loss = head_loss(cfg)

    def loss_fn(model: torch.nn.Module, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        return loss(model(images), targets)[0]

    return loss_fn
