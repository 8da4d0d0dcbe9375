"""BCKD's distillation terms (Yang et al., ICCV 2023), as the official code computes them
(../shared/BCKD.md). The caller applies the loss weights (1.0 and 4.0 by default).

Classification: every location and every class is its own binary problem; binary cross-entropy
between the student's and the teacher's sigmoid probabilities, modulated by |p_t - p_s|^beta
(Quality Focal Loss with the teacher's dense soft targets). No softmax, no temperature.
Localization: 1 - GIoU between decoded student and teacher boxes at every location, weighted by
the (detached) largest per-class probability gap there. Independent of how a head encodes boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _normalise(loss: torch.Tensor, weight: torch.Tensor | None, avg_factor: float | None) -> torch.Tensor:
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    return loss.sum() / (float(avg_factor) if avg_factor is not None else max(loss.shape[0], 1))


def bckd_cls_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weight: torch.Tensor | None = None,
                  avg_factor: float | None = None, beta: float = 1.0) -> torch.Tensor:
    """Classification distillation. Logits [N, C] pre-sigmoid; weight [N] (None: ones); avg_factor
    (None: N). sum_i w_i sum_c BCE(p_s, p_t) |p_t - p_s|^beta / avg_factor; teacher detached."""
    with torch.autocast(student_logits.device.type, enabled=False):  # float32 inside, stable under AMP
        s = _wide(student_logits)
        p_t = _wide(teacher_logits.detach()).sigmoid()
        bce = F.binary_cross_entropy_with_logits(s, p_t, reduction="none")  # from the logit: stable
        loss = (bce * (p_t - s.sigmoid()).abs().pow(beta)).sum(dim=1)  # modulating factor keeps its gradient
        return _normalise(loss, weight, avg_factor)


def bckd_loc_loss(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor, student_logits: torch.Tensor,
                  teacher_logits: torch.Tensor, weight: torch.Tensor | None = None,
                  avg_factor: float | None = None) -> torch.Tensor:
    """Localization distillation. Boxes [N, 4] xyxy (any consistent unit) decoded at the same N
    locations, logits [N, C]. sum_i v_i (1 - GIoU(b_s, b_t)) / avg_factor with
    v_i = w_i max_c |p_t - p_s| (detached); teacher detached."""
    with torch.autocast(student_boxes.device.type, enabled=False):
        gap = (_wide(teacher_logits.detach()).sigmoid() - _wide(student_logits.detach()).sigmoid()).abs()
        v = gap.max(dim=1).values  # [N]
        giou = generalized_box_iou_loss(_wide(student_boxes), _wide(teacher_boxes.detach()), reduction="none", eps=1e-6)
        return _normalise(v * giou, weight, avg_factor)
