import math

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss

from distill.losses.gfl import distribution_focal_loss, quality_focal_loss
from distill.models.assign import atss_assign, point_anchors
from distill.models.heads.common import anchor_points
from distill.models.heads.gfl import decode


def test_quality_focal_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid 0.5 and 0.75
    loss = quality_focal_loss(logits, torch.tensor([0]), torch.tensor([0.8]), beta=2.0)
    # class 0: BCE(0.5 -> 0.8) = ln 2, x |0.5 - 0.8|^2; class 1: BCE(0.75 -> 0) = ln 4, x 0.75^2
    expected = math.log(2) * 0.09 + math.log(4) * 0.5625
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    background = quality_focal_loss(logits, torch.tensor([-1]), torch.tensor([0.0]))
    assert background.item() == pytest.approx(math.log(2) * 0.25 + math.log(4) * 0.5625, rel=1e-5)


def test_distribution_focal_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(2.0), 0.0]])  # softmax 0.25, 0.5, 0.25
    loss = distribution_focal_loss(logits, torch.tensor([0.4]))
    # target 0.4 between bins 0 and 1: 0.6 * CE(bin 0) + 0.4 * CE(bin 1)
    assert loss.item() == pytest.approx(0.6 * math.log(4) + 0.4 * math.log(2), rel=1e-5)


def test_giou_loss_by_hand():
    a, b = torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]])
    # IoU 1/7; enclosing box 3x3 = 9, union 7 -> GIoU = 1/7 - 2/9
    assert generalized_box_iou_loss(a, b).item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-5)


def test_decode_known_distribution_and_point():
    reg_max = 16
    dists = torch.full((1, 1, 4, reg_max + 1), -100.0)
    for side, bin_ in enumerate([2, 3, 4, 5]):  # left, top, right, bottom in stride units
        dists[0, 0, side, bin_] = 100.0
    outputs = {"bbox_dists": dists, "cls_logits": torch.zeros(1, 1, 3),
               "points": torch.tensor([[12.0, 20.0]]), "strides": torch.tensor([8.0])}
    boxes, scores = decode(outputs)
    torch.testing.assert_close(boxes, torch.tensor([[[12 - 16.0, 20 - 24.0, 12 + 32.0, 20 + 40.0]]]))
    torch.testing.assert_close(scores, torch.full((1, 1, 3), 0.5))
    # half the mass on bins 2 and 3 -> 2.5 bins
    dists[0, 0, 0] = -100.0
    dists[0, 0, 0, 2] = dists[0, 0, 0, 3] = 100.0
    assert decode(outputs)[0][0, 0, 0].item() == pytest.approx(12 - 2.5 * 8)


def test_anchor_points_are_cell_centres():
    points, strides = anchor_points([(2, 3), (1, 2)], (8, 16), torch.device("cpu"))
    assert points.tolist()[:4] == [[4, 4], [12, 4], [20, 4], [4, 12]]
    assert points.tolist()[6:] == [[8, 8], [24, 8]] and strides.tolist() == [8] * 6 + [16] * 2


def test_atss_on_a_hand_made_layout():
    points, strides = anchor_points([(4, 4)], (8,), torch.device("cpu"))  # 32x32 input, stride 8
    anchors = point_anchors(points, strides, anchor_scale=1.0)  # 8x8 anchors on each cell
    gts = torch.tensor([[0.0, 0, 16, 16], [8.0, 0, 24, 8]])
    assigned = atss_assign(anchors, [16], gts, topk=9)
    # gt 0: its 4 covering cells (IoU 0.25) pass mean+std of the 9 candidates (thr ~0.243);
    # gt 1 (IoU 0.5 with cells 1 and 2, thr ~0.332) takes cell 1, which overlaps it more than gt 0.
    expected = torch.full((16,), -1)
    expected[[0, 4, 5]] = 0
    expected[[1, 2]] = 1
    assert assigned.tolist() == expected.tolist()
    assert (atss_assign(anchors, [16], torch.zeros(0, 4)) == -1).all()
