"""RetinaNet, FCOS and ATSS beside GFL: each loss on a hand-made case against hand-computed values, the
assigners, a few training steps on the tiny dataset, export parity, and distillation of each head."""

import math

import numpy as np
import onnx
import pytest
import torch

from deploy.errors import InputError
from deploy.evaluate import coco_eval
from deploy.predict import predict, runner_infer
from deploy.preprocess import preprocess_batch
from deploy.runtimes import open_runner
from distill.distiller import Distiller, check_pair
from distill.losses.atss import atss_loss
from distill.losses.detection import make_detection_loss
from distill.losses.fcos import fcos_assign, fcos_loss, level_ranges
from distill.losses.retinanet import max_iou_assign, retinanet_loss
from distill.losses.targets import Targets, centerness_target
from distill.models.detector import ModelConfig, build_detector
from distill.models.heads.retinanet import anchor_shapes
from distill.settings import DistillConfig, TrainConfig
from distill.trainer import train
from export.calibration import calibration_paths
from export.onnx import export_onnx, parity
from export.onnxruntime_int8 import (
    onnx_decode_nodes,
    preprocess_for_quantization,
    quantize_onnxruntime,
    quantized_nodes,
)
from export.openvino_int8 import openvino_ir

HEADS = ("retinanet", "fcos", "atss")
SMALL = dict(backbone="efficientnet_lite0", pretrained="none", input_size=[64, 64], fpn_channels=16,
             head_channels=16, head_convs=1)
LOG2 = math.log(2.0)
FOCAL_POS_AT_0 = 0.25 * 0.25 * LOG2  # alpha * (1 - 0.5)^2 * BCE at logit 0, target 1
FOCAL_NEG_AT_0 = 0.75 * 0.25 * LOG2  # (1 - alpha) * 0.5^2 * BCE at logit 0, target 0


def targets_of(labels, boxes):
    return Targets(torch.tensor(labels), torch.tensor(boxes, dtype=torch.float32),
                   float(max(sum(x >= 0 for x in labels), 1)))


def test_retinanet_anchors_are_nine_per_location_with_the_right_areas():
    shapes = anchor_shapes(8)
    assert shapes.shape == (9, 2)
    torch.testing.assert_close(shapes[:3].prod(1), torch.tensor([32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)]) ** 2)
    torch.testing.assert_close(shapes[:3, 1] / shapes[:3, 0], torch.full((3,), 0.5))  # ratio h / w first
    torch.testing.assert_close(shapes[6:, 1] / shapes[6:, 0], torch.full((3,), 2.0))


def test_max_iou_assignment_by_hand():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    anchors = torch.tensor([[0.0, 0, 10, 10],   # IoU 1: positive
                            [0.0, 0, 10, 22],   # IoU 100/220 = 0.45: ignored (between 0.4 and 0.5)
                            [20.0, 20, 30, 30],  # IoU 0: background
                            [5.0, 0, 15, 10]])  # IoU 50/150 = 0.33: background
    assert max_iou_assign(anchors, gt).tolist() == [0, -2, -1, -1]
    # A box whose best anchor is below 0.5 still gets that anchor (low-quality match).
    assert max_iou_assign(anchors[1:], gt).tolist() == [0, -1, -1]


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_retinanet_loss_by_hand(box_loss):
    # Two anchors, one class, logits 0. Anchor 0 is positive for its box shifted 1 px right: target
    # deltas (10 * 1/10, 0, 0, 0) against predicted 0 -> smooth-L1 (beta 1/9) = 1 - 1/18. Zero deltas
    # decode to the anchor: GIoU of [0,0,10,10] and [1,0,11,10] = 90/110 (the enclosing box is the union).
    outputs = {"cls_logits": torch.zeros(1, 2, 1), "deltas": torch.zeros(1, 2, 4),
               "anchors": torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60]])}
    assigned = targets_of([0, -1], [[1.0, 0, 11, 10], [0, 0, 0, 0]])
    losses = retinanet_loss(outputs, assigned, (1.0, 1.0), box_loss)
    assert losses["raw_focal"].item() == pytest.approx(FOCAL_POS_AT_0 + FOCAL_NEG_AT_0, rel=1e-5)
    expected = 1 - 1 / 18 if box_loss == "smooth_l1" else 1 - 90 / 110
    assert losses["raw_box"].item() == pytest.approx(expected, rel=1e-5)


def test_fcos_ranges_and_assignment_by_hand():
    assert level_ranges(torch.tensor([8.0, 8, 16, 32])).tolist() == [[-1, 64], [-1, 64], [64, 128], [128, math.inf]]
    points = torch.tensor([[5.0, 5], [15, 15], [40, 40], [5, 5]])
    strides = torch.tensor([8.0, 8, 8, 16])
    gt = torch.tensor([[0.0, 0, 20, 20], [0, 0, 60, 60]])
    got = fcos_assign(points, strides, level_ranges(strides), gt, radius=0)
    # (5,5) lies in both: the smaller box 0; (15,15) too; (40,40) only in box 1; the stride-16 copy of
    # (5,5) reaches at most 55 < 64, below its level's range: background.
    assert got.tolist() == [0, 0, 1, -1]
    # Centre sampling at 1.5 strides (12 px) around box 1's centre (30, 30): (40, 40) stays positive,
    # (50, 50), inside box 1 but outside [18, 18, 42, 42], becomes background.
    points = torch.tensor([[40.0, 40], [50, 50]])
    ranges = torch.tensor([[-1.0, 64]] * 2)
    assert fcos_assign(points, torch.tensor([8.0, 8]), ranges, gt, 0).tolist() == [1, 1]
    assert fcos_assign(points, torch.tensor([8.0, 8]), ranges, gt, 1.5).tolist() == [1, -1]


def test_centerness_by_hand():
    got = centerness_target(torch.tensor([[3.0, 5], [5, 5]]), torch.tensor([[0.0, 0, 10, 10]] * 2))
    torch.testing.assert_close(got, torch.tensor([math.sqrt(3 / 7), 1.0]))


def test_fcos_loss_by_hand():
    # One positive location at (5, 5), stride 1, predicting distances (4, 5, 5, 5) -> box [1, 0, 10, 10]
    # against [0, 0, 10, 10]: IoU 0.9, enclosing box = the union -> GIoU loss 0.1, centerness target 1
    # (weight 1, denominator 1); centerness logit 0 -> BCE log 2. A second location is background.
    outputs = {"cls_logits": torch.zeros(1, 2, 1), "distances": torch.tensor([[[4.0, 5, 5, 5], [1, 1, 1, 1]]]),
               "centerness": torch.zeros(1, 2), "points": torch.tensor([[5.0, 5], [50, 50]]), "strides": torch.ones(2)}
    losses = fcos_loss(outputs, targets_of([0, -1], [[0.0, 0, 10, 10], [0, 0, 0, 0]]))
    assert losses["raw_focal"].item() == pytest.approx(FOCAL_POS_AT_0 + FOCAL_NEG_AT_0, rel=1e-5)
    assert losses["raw_giou"].item() == pytest.approx(0.1, rel=1e-5)
    assert losses["raw_centerness"].item() == pytest.approx(LOG2, rel=1e-5)


def test_atss_loss_by_hand():
    # Zero deltas decode to the anchor itself: [1, 0, 11, 10] against [0, 0, 10, 10] -> IoU 90/110, the
    # enclosing box is the union (110) -> GIoU loss 1 - 90/110; centerness of (5, 5) in the box is 1.
    outputs = {"cls_logits": torch.zeros(1, 1, 1), "deltas": torch.zeros(1, 1, 4), "centerness": torch.zeros(1, 1),
               "anchors": torch.tensor([[1.0, 0, 11, 10]]), "points": torch.tensor([[5.0, 5]]),
               "strides": torch.ones(1)}
    losses = atss_loss(outputs, targets_of([0], [[0.0, 0, 10, 10]]), (1.0, 2.0, 1.0))
    assert losses["raw_focal"].item() == pytest.approx(FOCAL_POS_AT_0, rel=1e-5)
    assert losses["raw_giou"].item() == pytest.approx(1 - 90 / 110, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - 90 / 110), rel=1e-5)
    assert losses["raw_centerness"].item() == pytest.approx(LOG2, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", HEADS)
def test_each_head_trains_a_few_steps(name, tiny_splits, tmp_path):
    cfg = ModelConfig(name=name, **{**SMALL, "pretrained": "imagenet", "input_size": [128, 128]})
    model = build_detector(cfg, len(tiny_splits[0].class_names), seed=0)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    tcfg = TrainConfig(epochs=1, batch_size=4, max_steps=3, workers=0, lr=0.01, warmup_steps=1, eval_every=1)
    metrics = train(model, make_detection_loss(cfg), tcfg, *tiny_splits, tmp_path, (128, 128), {}, progress=False)
    assert metrics["num_images"] == len(tiny_splits[1].images)
    assert any(not torch.equal(before[k], v) for k, v in model.head.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", HEADS)  # GFL: tests/export/
def test_each_head_runs_through_every_runtime_and_the_evaluator(name, tiny_splits, tmp_path):
    train_set, val = tiny_splits
    cfg = ModelConfig(name=name, **{**SMALL, "pretrained": "imagenet", "input_size": [128, 128]})
    model = build_detector(cfg, len(train_set.class_names), seed=0).eval()
    torch.nn.init.zeros_(model.head.cls_out.bias)  # scores spread around 0.5, as tests/conftest.py's tiny_model
    path = export_onnx(model, train_set.class_names, tmp_path / "model.onnx", (128, 128))
    images, _ = preprocess_batch([val.image_path(i) for i in val.images[:4]], (128, 128))
    diff = parity(model, path, images)
    assert diff["scores_max_abs"] <= 1e-4 and diff["boxes_max_abs"] <= 1e-2, diff

    fp32 = [open_runner(str(path)).infer(images[i : i + 1]) for i in range(4)]
    xml = openvino_ir(path, tmp_path / "model.xml")
    ov = [open_runner(str(xml)).infer(images[i : i + 1]) for i in range(4)]
    for key, atol in (("scores", 1e-4), ("boxes", 1e-2)):
        np.testing.assert_allclose(np.concatenate([o[key] for o in ov]), np.concatenate([o[key] for o in fp32]),
                                   atol=atol)

    prepared = preprocess_for_quantization(path, tmp_path / "prepared.onnx")
    int8 = quantize_onnxruntime(prepared, tmp_path / "model.int8.onnx", calibration_paths(train_set, 16), (128, 128))
    graph = onnx.load(str(int8))
    assert not set(onnx_decode_nodes(graph)) & quantized_nodes(graph)  # the head's decode stays in float
    scores8 = np.concatenate([open_runner(str(int8)).infer(images[i : i + 1])["scores"] for i in range(4)])
    corr = np.corrcoef(scores8.ravel(), np.concatenate([o["scores"] for o in fp32]).ravel())[0, 1]
    print(f"{name}: ORT INT8 vs FP32 scores corr {corr:.3f}")
    # An untrained head's scores vary little, so INT8 noise weighs: measured 0.80 (GFL, as in
    # tests/export/test_quantize.py), 0.84 (RetinaNet), 0.80 (FCOS), 0.80 (ATSS).
    assert corr > 0.75, corr

    runner = open_runner(str(path))
    results = predict(runner_infer(runner), val, (128, 128), batch_size=1, fixed_batch=runner.batch)
    assert np.isfinite(coco_eval(val, results)["AP"])


def batch():
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 20, 60, 60], [0, 0, 16, 16]]), "labels": torch.tensor([0, 2])}]
    return images, targets


@pytest.mark.slow
@pytest.mark.parametrize("name", HEADS)
def test_each_head_distils_with_bckd_and_only_the_student_learns(name):
    teacher = build_detector(ModelConfig(name=name, **{**SMALL, "head_channels": 32, "head_convs": 2}), 3, seed=1)
    student_cfg = ModelConfig(name=name, **SMALL)
    student = build_detector(student_cfg, 3, seed=0).train()
    check_pair(teacher, student, ["a", "b", "c"], ["a", "b", "c"], (64, 64), "t.pt")
    distiller = Distiller(teacher, student_cfg, DistillConfig(method="bckd"), torch.device("cpu"))
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    for _ in range(2):
        losses = distiller(student, *batch())
        assert losses["raw_bckd_cls"] > 0 and losses["raw_bckd_loc"] > 0
        optimizer.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.slow
def test_different_anchor_layouts_are_refused():
    teacher = build_detector(ModelConfig(name="retinanet", **SMALL), 3, seed=0)
    student = build_detector(ModelConfig(name="atss", **SMALL), 3, seed=0)
    with pytest.raises(InputError, match="teacher \\(retinanet\\) has 9 anchors per location, student \\(atss\\) 1"):
        check_pair(teacher, student, ["a", "b", "c"], ["a", "b", "c"], (64, 64), "t.pt")
    other = build_detector(ModelConfig(name="retinanet", octave_base_scale=3.0, **SMALL), 3, seed=0)
    with pytest.raises(InputError, match=r"anchors differ in width or height by up to 33% \(allowed 5%"):
        check_pair(teacher, other, ["a", "b", "c"], ["a", "b", "c"], (64, 64), "t.pt")
    # within the tolerance (torchvision's integer anchor sizes are up to 1.6% off edgekd's): accepted
    close = build_detector(ModelConfig(name="retinanet", octave_base_scale=4.1, **SMALL), 3, seed=0)
    check_pair(teacher, close, ["a", "b", "c"], ["a", "b", "c"], (64, 64), "t.pt")
    shifted = build_detector(ModelConfig(name="retinanet", point_offset=0.0, **SMALL), 3, seed=0)
    with pytest.raises(InputError, match=r"place their locations differently \(by up to 16 px: set "
                                         r"student.model.point_offset"):
        check_pair(teacher, shifted, ["a", "b", "c"], ["a", "b", "c"], (64, 64), "t.pt")
    with pytest.raises(InputError, match="ld distils GFL's box distributions"):
        Distiller(teacher, ModelConfig(name="retinanet", **SMALL), DistillConfig(method="ld"), torch.device("cpu"))


@pytest.mark.slow
def test_a_gfl_teacher_distils_an_atss_student_in_pixels():
    # Same locations, one anchor each: the pair is accepted and boxes are compared in input pixels.
    teacher = build_detector(ModelConfig(name="gfl", **SMALL), 3, seed=1)
    student_cfg = ModelConfig(name="atss", **SMALL)
    student = build_detector(student_cfg, 3, seed=0).train()
    check_pair(teacher, student, ["a", "b", "c"], ["a", "b", "c"], (64, 64), "t.pt")
    losses = Distiller(teacher, student_cfg, DistillConfig(method="bckd"), torch.device("cpu"))(student, *batch())
    assert torch.isfinite(losses["raw_bckd_loc"]) and losses["raw_bckd_loc"] > 0


def test_loss_weights_of_the_wrong_length_name_the_setting():
    from distill.losses.detection import head_loss

    with pytest.raises(InputError, match=r"model.loss_weights: fcos takes 3 weights, got \[1.0\]"):
        head_loss(ModelConfig(name="fcos", loss_weights=[1.0]))
