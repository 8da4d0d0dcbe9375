import math

import pytest
import torch

from distill.losses.bckd import bckd_cls_loss, bckd_loc_loss


def test_cls_loss_by_hand():
    s = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # p_s = 0.5, 0.75
    t = torch.tensor([[math.log(4.0), 0.0]])  # p_t = 0.8, 0.5
    # BCE(0.5 | 0.8) = ln 2 (p_s = 0.5 either way), x |0.8 - 0.5|;
    # BCE(0.75 | 0.5) = -(0.5 ln 0.75 + 0.5 ln 0.25), x |0.5 - 0.75|
    expected = math.log(2) * 0.3 + -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) * 0.25
    loss = bckd_cls_loss(s, t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert bckd_cls_loss(s, t, avg_factor=4.0).item() == pytest.approx(expected / 4, rel=1e-5)
    assert bckd_cls_loss(s, t, weight=torch.tensor([0.0])).item() == 0.0


def test_cls_loss_gradient_flows_through_the_modulating_factor():
    s = torch.tensor([[0.3, -1.2]], requires_grad=True)
    t = torch.tensor([[1.0, -0.4]], requires_grad=True)
    bckd_cls_loss(s, t).backward()
    p_s, p_t = s.detach().sigmoid(), t.detach().sigmoid()
    # d/ds [BCE * |p_t - p_s|] = (p_s - p_t)|p_t - p_s| + BCE * sign(p_s - p_t) * p_s (1 - p_s)
    bce = -(p_t * p_s.log() + (1 - p_t) * (1 - p_s).log())
    expected = (p_s - p_t) * (p_t - p_s).abs() + bce * torch.sign(p_s - p_t) * p_s * (1 - p_s)
    torch.testing.assert_close(s.grad, expected)
    assert t.grad is None  # the teacher is detached


def test_cls_loss_is_zero_when_student_equals_teacher_and_stable_in_half_precision():
    x = torch.randn(50, 10) * 5
    assert bckd_cls_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    big = torch.tensor([[30.0, -30.0]]).half()
    assert torch.isfinite(bckd_cls_loss(big, -big)) and bckd_cls_loss(big, -big).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(bckd_cls_loss(x.bfloat16(), -x.bfloat16()))


def test_loc_loss_by_hand():
    sb = torch.tensor([[0.0, 0, 2, 2], [0.0, 0, 4, 4]], requires_grad=True)
    tb = torch.tensor([[1.0, 1, 3, 3], [0.0, 0, 4, 4]])
    s_logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # p_s = 0.5
    t_logits = torch.tensor([[math.log(4.0), 0.0], [0.0, math.log(9.0)]])  # p_t = (0.8, 0.5), (0.5, 0.9)
    # location 0: v = 0.3, 1 - GIoU = 1 - (1/7 - 2/9); location 1: identical boxes, v = 0.4, loss 0
    expected = 0.3 * (1 - (1 / 7 - 2 / 9)) / 2
    loss = bckd_loc_loss(sb, tb, s_logits, t_logits)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert (bckd_loc_loss(sb, tb, s_logits, t_logits, weight=torch.tensor([0.0, 1.0])).item()
            == pytest.approx(0.0, abs=1e-7))
    assert bckd_loc_loss(sb, tb, s_logits, t_logits, avg_factor=1.0).item() == pytest.approx(2 * expected, rel=1e-5)
    loss.backward()
    assert sb.grad is not None and sb.grad[0].abs().sum() > 0


def test_gradients_match_finite_differences_in_float64():
    torch.manual_seed(0)
    s = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 4, dtype=torch.float64)
    weight = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: bckd_cls_loss(x, t, weight, avg_factor=3.0), (s,))
    xy = torch.rand(6, 2, dtype=torch.float64) * 10
    boxes = torch.cat([xy, xy + 1 + torch.rand(6, 2, dtype=torch.float64) * 5], 1).requires_grad_()
    t_boxes = boxes.detach() + torch.randn(6, 4, dtype=torch.float64)
    t_boxes[:, 2:] = torch.maximum(t_boxes[:, 2:], t_boxes[:, :2] + 0.5)
    assert torch.autograd.gradcheck(lambda b: bckd_loc_loss(b, t_boxes, s.detach(), t, weight, 3.0), (boxes,))


def test_zero_when_equal_and_positive_otherwise():
    x = torch.randn(8, 5, requires_grad=True)
    loss = bckd_cls_loss(x, x.detach())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and torch.count_nonzero(x.grad) == 0
    assert bckd_cls_loss(x, x.detach() + 0.5).item() > 0
    boxes = torch.tensor([[0.0, 0, 4, 4], [1.0, 2, 3, 5]])
    logits_s, logits_t = torch.zeros(2, 3), torch.ones(2, 3)
    assert bckd_loc_loss(boxes, boxes.clone(), logits_s, logits_t).item() == pytest.approx(0.0, abs=1e-6)
    assert bckd_loc_loss(boxes, boxes + 1, logits_s, logits_t).item() > 0
