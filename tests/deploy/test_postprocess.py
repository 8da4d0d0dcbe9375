import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import nms as tv_nms

from deploy.postprocess import _cv2, batched_nms, box_iou, nms, select_detections
from pipeline.tools.bench_nms import torchvision_select

# batched_nms runs OpenCV's NMS where cv2 imports, numpy's otherwise: both must keep torchvision's set.
PATHS = [pytest.param(False, id="numpy"),
         pytest.param(True, id="opencv", marks=pytest.mark.skipif(_cv2 is None, reason="OpenCV is not installed"))]


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(5, 80, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    np.testing.assert_allclose(box_iou(a, b), tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_keeps_the_same_set_as_torchvision(seed, iou):
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, 300), rng.random(300).astype(np.float32)
    ours = nms(boxes, scores, iou)
    ref = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    assert ours.tolist() == ref.tolist()  # same boxes, same (decreasing-score) order


@pytest.mark.parametrize("use_opencv", PATHS)
@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_keeps_the_same_set_as_torchvision(seed, use_opencv):
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, 400), rng.random(400).astype(np.float32)
    labels = rng.integers(0, 5, size=400)
    ours = batched_nms(boxes, scores, labels, 0.5, use_opencv)
    ref = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5).numpy()
    assert sorted(ours.tolist()) == sorted(ref.tolist())
    assert len(ours) < 400  # the case really suppresses something


def test_select_detections_hand_case():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    # location 0 and 1 overlap (IoU 9/11); location 3 duplicates 0 exactly
    scores = np.array([
        [0.9, 0.00],   # class 0 strong
        [0.8, 0.70],   # same class 0 -> suppressed by location 0; class 1 survives (other class)
        [0.04, 0.30],  # class 0 below threshold; class 1 kept
        [0.0, 0.01],   # below threshold everywhere
    ], np.float32)
    kept_boxes, kept_scores, labels = select_detections(boxes, scores, score_threshold=0.05, iou_threshold=0.6)
    assert labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(kept_scores, [0.9, 0.7, 0.3])
    np.testing.assert_allclose(kept_boxes, boxes[[0, 1, 2]])
    _, _, top1 = select_detections(boxes, scores, max_detections=1)
    assert top1.tolist() == [0]


def test_select_detections_empty():
    boxes, scores, labels = select_detections(np.zeros((5, 4), np.float32), np.zeros((5, 3), np.float32))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def torchvision_nms(boxes, scores, labels=None, iou=0.5):
    b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
    if labels is None:
        return tv_nms(b, s, iou).numpy().tolist()
    return tv_batched_nms(b, s, torch.from_numpy(labels), iou).numpy().tolist()


def chain(n, step=3.0):
    """Boxes 10 px wide, each overlapping the next (IoU 7/13) but not the one after (4/16): greedy keeps
    every other one, the worst case for resolving the order as a fixed point."""
    x = np.arange(n, dtype=np.float32) * step
    return np.stack([x, np.zeros(n, np.float32), x + 10, np.full(n, 10, np.float32)], axis=1)


@pytest.mark.parametrize("use_opencv", PATHS)
@pytest.mark.parametrize("case", ["equal_scores", "duplicates", "chain", "one_box", "no_box", "nested", "many_classes"])
def test_nms_matches_torchvision_on_adversarial_inputs(case, use_opencv):
    rng = np.random.default_rng(7)
    if case == "equal_scores":  # ties everywhere: the order among equals must be torchvision's too
        boxes, scores = random_boxes(rng, 300), np.full(300, 0.5, np.float32)
    elif case == "duplicates":  # the same box many times over, with tied and distinct scores
        boxes = np.repeat(random_boxes(rng, 20), 15, axis=0)
        scores = rng.choice([0.2, 0.5, 0.9], size=300).astype(np.float32)
    elif case == "chain":
        boxes, scores = chain(1000), np.linspace(1, 0.01, 1000).astype(np.float32)
    elif case == "one_box":
        boxes, scores = random_boxes(rng, 1), np.array([0.3], np.float32)
    elif case == "no_box":
        boxes, scores = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    elif case == "nested":  # boxes inside boxes around one centre
        r = rng.uniform(5, 100, 200)
        boxes = np.stack([100 - r, 100 - r, 100 + r, 100 + r], axis=1).astype(np.float32)
        scores = rng.random(200).astype(np.float32)
    else:  # 1000 candidates over 80 classes, overlapping within and across classes
        boxes, scores = random_boxes(rng, 1000), rng.random(1000).astype(np.float32)
    labels = rng.integers(0, 80 if case == "many_classes" else 3, size=len(boxes))
    assert nms(boxes, scores, 0.5).tolist() == torchvision_nms(boxes, scores)
    assert (sorted(batched_nms(boxes, scores, labels, 0.5, use_opencv).tolist())
            == sorted(torchvision_nms(boxes, scores, labels)))
    if case == "chain":
        assert nms(boxes, scores, 0.5).tolist() == list(range(0, 1000, 2))


@pytest.mark.parametrize("use_opencv", PATHS)
def test_batched_nms_returns_decreasing_scores(use_opencv):
    rng = np.random.default_rng(3)
    boxes, scores, labels = random_boxes(rng, 500), rng.random(500).astype(np.float32), rng.integers(0, 10, 500)
    kept = batched_nms(boxes, scores, labels, 0.5, use_opencv)
    assert np.all(np.diff(scores[kept]) <= 0)  # select_detections cuts at max_detections from the top


def assert_same_detections(ours, ref):
    assert ours[2].tolist() == ref[2].tolist()  # same labels in the same (decreasing-score) order
    np.testing.assert_array_equal(ours[1], ref[1])
    np.testing.assert_array_equal(ours[0], ref[0])
    assert ours[0].dtype == np.float32 and ours[1].dtype == np.float32 and ours[2].dtype == np.int64


@pytest.mark.parametrize("use_opencv", PATHS)
@pytest.mark.parametrize("classes", [1, 10, 80])
@pytest.mark.parametrize("objects, jitter", [(0, 1.0), (3, 1.0), (20, 1.0), (60, 1.0), (20, 4.0)])
def test_select_detections_keeps_torchvisions_detections_on_dense_outputs(classes, objects, jitter, use_opencv):
    """3024 anchors of a dense detector (pipeline.tools.bench_nms's scenes): from few candidates to over
    pre_nms_topk, from under max_detections kept to far over it, boxes NMS merges and boxes it seldom does."""
    from pipeline.tools.bench_nms import dense_outputs

    boxes, scores = dense_outputs(np.random.default_rng(classes * 100 + objects), classes, objects, jitter=jitter)
    for max_detections in (100, 7, 1000):
        ours = select_detections(boxes, scores, max_detections=max_detections, use_opencv=use_opencv)
        assert_same_detections(ours, torchvision_select(boxes, scores, max_detections=max_detections))


@pytest.mark.parametrize("use_opencv", PATHS)
@pytest.mark.parametrize("seed", range(3))
def test_select_detections_keeps_torchvisions_detections_on_random_outputs(seed, use_opencv):
    """Uniform scores over 80 classes: nearly every pair is a candidate, top-k cuts 240 000 to 1000, and
    most survive NMS (boxes of 80 classes rarely share a class). No two scores are equal (240 000 draws in
    float32 would tie), so the order is torchvision's own."""
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 3000)
    scores = ((rng.permutation(3000 * 80) + 1) / (3000 * 80 + 1)).astype(np.float32).reshape(3000, 80)
    for iou, max_detections in ((0.6, 100), (0.3, 300), (0.9, 1000)):
        ours = select_detections(boxes, scores, iou_threshold=iou, max_detections=max_detections, use_opencv=use_opencv)
        assert_same_detections(ours, torchvision_select(boxes, scores, iou=iou, max_detections=max_detections))


@pytest.mark.parametrize("use_opencv", PATHS)
def test_a_box_kept_in_one_slice_still_suppresses_in_the_next(use_opencv):
    """With OpenCV, NMS runs on 2 x max_detections candidates, then on the kept so far with the next slice:
    a box kept in one slice must suppress its overlaps in the next, and boxes of another class must not."""
    a, b, far = [0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]  # IoU(a, b) = 9/11
    boxes = np.array([a, b, a, b, b, a, far], np.float32)
    scores = np.zeros((7, 2), np.float32)
    scores[[0, 1, 2, 3, 4, 5, 6, 6], [0, 0, 0, 0, 0, 1, 1, 0]] = [0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5]
    # max_detections 2: slice one (4) keeps a/0 only; slice two holds b/0 at 0.7, which a/0 of slice one
    # suppresses, then a/1 (another class: kept) and the two kept end it
    for max_detections, labels, kept in ((2, [0, 1], [0.9, 0.65]), (3, [0, 1, 1], [0.9, 0.65, 0.6]),
                                         (10, [0, 1, 1, 0], [0.9, 0.65, 0.6, 0.5])):
        ours = select_detections(boxes, scores, max_detections=max_detections, use_opencv=use_opencv)
        assert ours[2].tolist() == labels
        np.testing.assert_allclose(ours[1], kept)
        assert_same_detections(ours, torchvision_select(boxes, scores, max_detections=max_detections))


@pytest.mark.parametrize("use_opencv", PATHS)
def test_select_detections_orders_equal_scores_by_location_then_class(use_opencv):
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], np.float32)
    scores = np.full((3, 2), 0.5, np.float32)
    _, _, labels = select_detections(boxes, scores, use_opencv=use_opencv)
    kept_boxes, _, _ = select_detections(boxes, scores, use_opencv=use_opencv)
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
    np.testing.assert_array_equal(kept_boxes, boxes[[0, 0, 1, 1, 2, 2]])
