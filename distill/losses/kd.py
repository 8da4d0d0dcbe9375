"""Baselines BCKD is compared with, in the same harness.

- Softmax KD on class logits: KL(softmax(t/T) || softmax(s/T)) * T^2 over classes at every
  location (the protocol BCKD argues against for sigmoid detectors).
- LD (Zheng et al., CVPR 2022): KL between teacher and student box-side distributions (GFL's
  reg_max+1 bins, softmax with temperature T = 10) at positive locations, as mmdetection computes it:
  the KL averaged over the bins, times T^2, weighted by the student's detached best class score, summed
  and divided by 4 (the sides), with no division by the sum of the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mean: bool = False) -> torch.Tensor:
    """Per-row KL(softmax(t/T) || softmax(s/T)) * T^2 over the last dim (summed, or averaged) -> [...]."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(log_p_s, p_t, reduction="none")
    return (kl.mean(-1) if mean else kl.sum(-1)) * temperature**2


def softmax_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    avg_factor: float | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax KD over classes; logits [N, C]; weight [N] (None: ones); summed over locations / avg_factor (None: N)."""
    with torch.autocast(student_logits.device.type, enabled=False):
        loss = _kl(student_logits, teacher_logits, temperature)
        if weight is not None:
            loss = loss * weight.float()
        return loss.sum() / (float(avg_factor) if avg_factor is not None else max(loss.shape[0], 1))


def ld_loss(student_dists: torch.Tensor, teacher_dists: torch.Tensor, weight: torch.Tensor,
            temperature: float = 10.0) -> torch.Tensor:
    """LD on positives: dists [P, 4, R+1] logits, weight [P] (the student's detached best class score).

    mmdetection 2.x, mmdet/models/losses/kd_loss.py `knowledge_distillation_loss`:
    `F.kl_div(...).mean(1) * (T * T)`, the KL averaged over the R+1 bins; and
    mmdet/models/dense_heads/ld_head.py `LDHead.loss_single`: `self.loss_ld(pred_corners, soft_corners,
    weight=weight_targets[:, None].expand(-1, 4).reshape(-1), avg_factor=4.0)`, so the weighted sum over
    every side of every positive is divided by 4.0 alone (per level, then summed over levels: the same).
    """
    with torch.autocast(student_dists.device.type, enabled=False):
        loss = _kl(student_dists, teacher_dists, temperature, mean=True)  # [P, 4]
        return (loss * weight.float()[:, None]).sum() / 4.0
