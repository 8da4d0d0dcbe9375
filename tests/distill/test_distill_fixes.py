"""The three fixes the distillation ablation rests on: probes leave every parameter and buffer as they
were, LD is mmdetection's, and letterbox padding enters neither the classification loss nor the
distillation terms."""

import math

import numpy as np
import pytest
import torch

from deploy.preprocess import Letterbox
from distill.data.dataset import DetectionDataset, image_region
from distill.distiller import Distiller, check_pair
from distill.losses.bckd import bckd_cls_loss
from distill.losses.gfl import assign_targets, gfl_loss, quality_focal_loss
from distill.losses.kd import ld_loss, positive_kd_loss
from distill.losses.targets import inside_region
from distill.models.detector import ModelConfig, build_detector
from distill.settings import DistillConfig

CLASSES = ["a", "b", "c"]
STUDENT = dict(backbone="efficientnet_lite0", pretrained="none", input_size=[64, 64], fpn_channels=16,
               head_channels=16, head_convs=1, freeze_bn=False)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_check_pair_changes_no_parameter_or_buffer_and_keeps_train_mode():
    torch.manual_seed(0)
    teacher = build_detector(ModelConfig(**{**STUDENT, "fpn_channels": 32, "head_channels": 32}), 3)
    student = build_detector(ModelConfig(**STUDENT), 3).train()  # BatchNorm not frozen: a train-mode probe moves it
    before_s, before_t = snapshot(student), snapshot(teacher)
    modes = [m.training for m in student.modules()]
    check_pair(teacher, student, CLASSES, CLASSES, (64, 64), "t.pt")
    assert identical(before_s, snapshot(student)) and identical(before_t, snapshot(teacher))
    assert [m.training for m in student.modules()] == modes
    student(torch.randn(1, 3, 64, 64))  # the control: a real train-mode forward does move the statistics
    assert not identical(before_s, snapshot(student))


def test_a_torchvision_backbone_is_built_without_moving_its_batchnorm():
    from distill.models.backbones import build_backbone

    backbone = build_backbone("resnet18", "none")
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var)) and int(m.num_batches_tracked) == 0
    assert backbone.channels == [128, 256, 512] and backbone.training


def test_ld_is_mmdetections_by_hand():
    # One positive, 4 sides, 2 bins. Student logits 0 (p_s = [1/2, 1/2]); teacher logits [0, ln 3] at T=1
    # (p_t = [1/4, 3/4]). KL per side = 1/4 ln(1/2) + 3/4 ln(3/2); mmdet averages over the 2 bins,
    # multiplies by T^2, weights by the student's score w and divides the sum by 4 (avg_factor=4.0).
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    s = torch.zeros(1, 4, 2)
    t = torch.tensor([0.0, math.log(3)]).expand(1, 4, 2)
    w = torch.tensor([0.6])
    assert ld_loss(s, t, w, temperature=1.0).item() == pytest.approx(4 * 0.6 * kl / 2 / 4, rel=1e-6)
    # T = 10 on logits scaled by 10: the same distributions, so x T^2 = 100; two positives add up, not average
    two = ld_loss(torch.zeros(2, 4, 2), 10 * t.expand(2, 4, 2), torch.tensor([0.6, 0.4]), temperature=10.0)
    assert two.item() == pytest.approx(100 * (0.6 + 0.4) * 4 * kl / 2 / 4, rel=1e-5)


def test_kd_pos_as_the_ld_codebase_computes_it():
    """KL over classes averaged (not summed), x T^2, each level's positives averaged, the levels summed."""
    # one positive at stride 8: teacher logits (0, ln 3) -> (1/4, 3/4) at T = 1; student uniform (1/2, 1/2)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    t = torch.tensor([[0.0, math.log(3)]])
    assert positive_kd_loss(torch.zeros(1, 2), t, torch.tensor([8]), 1.0).item() == pytest.approx(kl / 2, rel=1e-6)
    # T = 2 on logits scaled by 2: the same distributions, x T^2 = 4. Stride 8 holds two positives (the KL
    # above and 0): their mean; stride 16 one (the KL): the levels add up, 4 * (kl / 2 / 2 + kl / 2)
    s = torch.zeros(3, 2)
    t2 = torch.tensor([[0.0, 2 * math.log(3)], [0.0, 0.0], [0.0, 2 * math.log(3)]])
    loss = positive_kd_loss(s, t2, torch.tensor([8, 8, 16]), 2.0)
    assert loss.item() == pytest.approx(4 * (kl / 2 / 2 + kl / 2), rel=1e-6)
    # no positive in the batch: zero, and still a graph to backpropagate through
    empty = torch.zeros(0, 2, requires_grad=True)
    zero = positive_kd_loss(empty, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert zero.item() == 0.0 and zero.requires_grad


def test_the_image_region_of_a_letterboxed_image():
    # a 100 x 50 (w x h) image into 64 x 64: scale 0.64, resized 64 x 32, padded 16 px above and below
    lb = Letterbox(scale=0.64, pad_x=0, pad_y=16, orig_height=50, orig_width=100)
    assert image_region(lb) == (0.0, 16.0, 64.0, 48.0)
    centers = torch.tensor([[4.0, 4.0], [4.0, 20.0], [60.0, 47.9], [60.0, 48.0]])
    assert inside_region(centers, torch.tensor(image_region(lb))).tolist() == [False, True, True, False]


def test_dataset_targets_carry_the_region(tiny_splits):
    train = tiny_splits[0]
    ds = DetectionDataset(train, (128, 96))  # a wide input: landscape scenes are padded left and right or not at all
    image, target = ds[0]
    x0, y0, x1, y1 = target["valid"].tolist()
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 128
    # outside the region the normalised input is exactly 0 (the mean colour), inside it is the image
    assert np.all(image[:, :, : int(x0)].numpy() == 0) and np.all(image[:, : int(y0), :].numpy() == 0)
    assert (target["boxes"][:, 0] >= x0 - 1e-3).all() and (target["boxes"][:, 3] <= y1 + 1e-3).all()


def hand_letterboxed_batch():
    """One 64 x 64 input whose image fills only rows 16..48 (a 2:1 image), one box inside it."""
    images = torch.zeros(1, 3, 64, 64)
    images[:, :, 16:48] = torch.randn(1, 3, 32, 64)
    targets = [{"boxes": torch.tensor([[8.0, 20.0, 40.0, 44.0]]), "labels": torch.tensor([1]),
                "valid": torch.tensor([0.0, 16.0, 64.0, 48.0])}]
    return images, targets


def test_padding_locations_enter_neither_qfl_nor_bckd():
    torch.manual_seed(0)
    student = build_detector(ModelConfig(**STUDENT), 3)
    teacher = build_detector(ModelConfig(**{**STUDENT, "head_channels": 32}), 3).eval()
    images, targets = hand_letterboxed_batch()
    out = student(images)
    assigned = assign_targets(out, targets)
    valid = assigned.valid
    inside = (out["points"][:, 1] >= 16) & (out["points"][:, 1] < 48)
    assert torch.equal(valid, inside) and 0 < int(valid.sum()) < valid.numel()  # rows 16..48 of every level
    assert bool(valid[assigned.labels >= 0].all())  # positives lie in the image
    # QFL: the sum over valid locations only, / positives
    n, a, c = out["cls_logits"].shape
    losses = gfl_loss(out, assigned)
    unmasked = gfl_loss(out, type(assigned)(assigned.labels, assigned.boxes, assigned.num_pos))
    quality = torch.zeros(n * a)
    pos = assigned.labels >= 0
    # the quality targets are IoUs of the predicted boxes; recompute QFL from the unmasked run's ratio
    per_location = quality_focal_loss(out["cls_logits"].reshape(n * a, c), assigned.labels, quality)
    assert losses["raw_qfl"] < unmasked["raw_qfl"]
    assert (unmasked["raw_qfl"] - losses["raw_qfl"]).item() == pytest.approx(
        (per_location[~valid].sum() / assigned.num_pos).item(), rel=1e-4)  # padding is background: quality 0 there
    assert not pos[~valid].any()
    # BCKD's classification term: the distiller's equals bckd_cls_loss over the valid rows alone
    distiller = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(method="bckd"), torch.device("cpu"))
    with torch.no_grad():
        t_out = teacher(images)
    got = distiller(student, images, targets)["raw_bckd_cls"]
    s_logits, t_logits = out["cls_logits"].reshape(n * a, c), t_out["cls_logits"].reshape(n * a, c)
    want = bckd_cls_loss(s_logits[valid], t_logits[valid], None, assigned.num_pos)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    everywhere = bckd_cls_loss(s_logits, t_logits, None, assigned.num_pos)
    assert everywhere.item() > want.item()
