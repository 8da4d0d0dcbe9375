"""Baselines BCKD is compared with, in the same harness.

- Softmax KD on class logits: KL(softmax(t/T) || softmax(s/T)) * T^2 over classes at every
  location (the protocol BCKD argues against for sigmoid detectors).
- LD (Zheng et al., CVPR 2022): KL between teacher and student box-side distributions (GFL's
  reg_max+1 bins, softmax with temperature T = 10) at positive locations, weighted like DFL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(softmax(t/T) || softmax(s/T)) * T^2 over the last dim -> [...]."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(-1) * temperature**2


def softmax_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    avg_factor: float | None = None) -> torch.Tensor:
    """Softmax KD over classes; logits [N, C]; summed over locations / avg_factor (None: N)."""
    with torch.autocast(student_logits.device.type, enabled=False):
        loss = _kl(student_logits, teacher_logits, temperature)
        return loss.sum() / (float(avg_factor) if avg_factor is not None else max(loss.shape[0], 1))


def ld_loss(student_dists: torch.Tensor, teacher_dists: torch.Tensor, weight: torch.Tensor,
            avg_factor: float, temperature: float = 10.0) -> torch.Tensor:
    """LD on positives: dists [P, 4, R+1] logits, weight [P] (detached quality), divided by 4 sides and
    avg_factor (the sum of weights), as GFL's DFL is."""
    with torch.autocast(student_dists.device.type, enabled=False):
        loss = _kl(student_dists, teacher_dists, temperature)  # [P, 4]
        return (loss * weight.float()[:, None]).sum() / 4.0 / float(avg_factor)
