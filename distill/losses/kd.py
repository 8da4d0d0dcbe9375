"""Baselines BCKD is compared with, in the same harness.

- Softmax KD on class logits: KL(softmax(t/T) || softmax(s/T)) * T^2 over classes at every
  location (the protocol BCKD argues against for sigmoid detectors).
- kd_pos, softmax KD as the LD codebase distils classes (the baseline of BCKD's lineage): at positive
  locations only, the KL averaged over classes, times T^2 (T = 2), each FPN level's sum divided by that
  level's positives, the levels summed.
- LD (Zheng et al., CVPR 2022): KL between teacher and student box-side distributions (GFL's
  reg_max+1 bins, softmax with temperature T = 10) at positive locations, as mmdetection computes it:
  the KL averaged over the bins, times T^2, weighted by the student's detached best class score, summed
  and divided by 4 (the sides), with no division by the sum of the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
        mean: bool = False) -> torch.Tensor:
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


def positive_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, strides: torch.Tensor,
                     temperature: float = 2.0) -> torch.Tensor:
    """Softmax KD at positive locations, as HikariTJU/LD computes `loss_kd`: logits [P, C] and the stride of
    each location's FPN level [P], positives only.

    HikariTJU/LD, mmdet/models/dense_heads/ld_head.py, `LDHead.loss_single` (per FPN level):
    `self.loss_kd(cls_score[pos_inds], soft_label[pos_inds], weight=label_weights[pos_inds],
    avg_factor=pos_inds.shape[0])`, the losses of the levels summed; mmdet/models/losses/kd_loss.py
    `knowledge_distillation_kl_div_loss`: `F.kl_div(...).mean(1) * (T * T)`, the KL averaged over the
    classes; configs/ld/ld_r50_gflv1_r101_fpn_coco_1x.py: `loss_kd` weight 10, T = 2 (the caller's weight).
    """
    with torch.autocast(student_logits.device.type, enabled=False):
        loss = _kl(student_logits, teacher_logits, temperature, mean=True)  # [P]
        total = loss.new_zeros(())
        for stride in torch.unique(strides):
            at = strides == stride
            total = total + loss[at].sum() / at.sum()
        return total + 0.0 * student_logits.sum()  # no positive: zero, still in the graph


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
