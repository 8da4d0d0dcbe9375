"""torchvision's COCO detectors as teachers, offline: the adapter against torchvision's own eval forward
and postprocess_detections on random weights (saved to a file, as a user's download would be), and
distillation from it into an edgekd student."""

import numpy as np
import pytest
import torch
import torchvision

from deploy.errors import InputError
from deploy.preprocess import MEAN, STD
from distill.distiller import DistillConfig, Distiller, check_pair
from distill.models.detector import ModelConfig, build_detector
from distill.models.torchvision_teacher import coco_categories, torchvision_teacher

CLASSES = ["dog", "person", "car"]  # a dataset's classes, in its own order
SIZE = 256


_SAVED = {}


def saved_detector(name, tmp_path):
    """Built once per name (a ResNet-50 build and save cost seconds); see _saved_detector."""
    if name not in _SAVED:
        _SAVED[name] = _saved_detector(name, tmp_path)
    return _SAVED[name]


def _saved_detector(name, tmp_path):
    """torchvision's model with random weights and the dataset classes' biases at 0 (so that their scores
    pass its 0.05 threshold and the rest stay near 0.01), saved as a weights file; and the model itself,
    its transform set to leave 256 x 256 alone."""
    torch.manual_seed(0)
    detector = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=91,
                                                          min_size=SIZE, max_size=SIZE)
    with torch.no_grad():
        bias = detector.head.classification_head.cls_logits.bias  # [anchors x 91], anchor-major
        wanted = [coco_categories(name).index(c) for c in CLASSES]
        bias.view(-1, 91)[:, wanted] = 0.0
        # Spread the scores: the init leaves them all near 0.5 behind GroupNorm. v1's head has no
        # normalisation, where larger weights saturate every score at 1.
        std = 0.01 if name == "retinanet_resnet50_fpn" else 0.05
        for m in detector.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, std)
    path = tmp_path / f"{name}.pth"
    torch.save(detector.state_dict(), path)
    return detector.eval(), path


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn_v2", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_the_adapter_finds_torchvisions_own_detections(name, tmp_path):
    detector, path = saved_detector(name, tmp_path)
    teacher = torchvision_teacher(f"torchvision:{name}", path, CLASSES, ModelConfig(input_size=[SIZE, SIZE]))
    image = torch.rand(3, SIZE, SIZE)
    normalised = ((image * 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]
    with torch.no_grad():
        theirs = detector([image])[0]
        boxes, scores = teacher.decode(teacher(normalised))
    categories = coco_categories(name)
    wanted = [categories.index(c) for c in CLASSES]
    checked, worst = 0, 0.0
    for box, score, label in zip(theirs["boxes"], theirs["scores"], theirs["labels"]):
        if int(label) not in wanted or checked >= 50:
            continue
        column = scores[0, :, wanted.index(int(label))]
        rows = torch.nonzero((column - score).abs() < 1e-5)[:, 0]
        assert len(rows), f"no adapter row scores {score:.6f} for {categories[label]}"
        error = (boxes[0, rows] - box).abs().max(dim=1).values.min().item()
        worst, checked = max(worst, error), checked + 1
    print(f"{name}: {checked} of torchvision's top detections found, boxes within {worst:.2e} px")
    assert checked >= 20 and worst < 1e-3


def test_distilling_from_a_torchvision_teacher_changes_only_the_student(tmp_path):
    _, path = saved_detector("fcos_resnet50_fpn", tmp_path)
    teacher = torchvision_teacher("torchvision:fcos_resnet50_fpn", path, CLASSES, ModelConfig(input_size=[SIZE, SIZE]))
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = ModelConfig(name="fcos", backbone="efficientnet_lite0", pretrained="none", input_size=[SIZE, SIZE],
                      fpn_channels=16, extra_levels=2, head_channels=16, head_convs=1, norm_groups=4, point_offset=0.0)
    student = build_detector(cfg, len(CLASSES), seed=0)
    check_pair(teacher, student, CLASSES, CLASSES, (SIZE, SIZE), "tv")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = Distiller(teacher, cfg, DistillConfig(method="bckd"), torch.device("cpu"))
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = [{"boxes": torch.tensor([[10.0, 20, 120, 200]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[50.0, 50, 250, 160]]), "labels": torch.tensor([2])}]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    student.train()
    for _ in range(2):
        losses = distiller(student, images, targets)
        assert losses["raw_bckd_cls"] > 0 and losses["raw_bckd_loc"] > 0
        optimizer.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    # edgekd's cell-centre locations are half a stride off torchvision's: refused, with the setting to change
    other = build_detector(ModelConfig(**{**cfg.__dict__, "point_offset": 0.5}), len(CLASSES), seed=0)
    with pytest.raises(InputError, match="set student.model.point_offset"):
        check_pair(teacher, other, CLASSES, CLASSES, (SIZE, SIZE), "tv")
    with pytest.raises(InputError, match="ld distils GFL's box distributions; teacher is fcos_resnet50_fpn"):
        Distiller(teacher, cfg, DistillConfig(method="ld"), torch.device("cpu"))


def test_a_retinanet_teacher_pairs_with_an_edgekd_retinanet_anchor_by_anchor(tmp_path):
    _, path = saved_detector("retinanet_resnet50_fpn_v2", tmp_path)
    teacher = torchvision_teacher("torchvision:retinanet_resnet50_fpn_v2", path, CLASSES, ModelConfig(input_size=[SIZE, SIZE]))
    cfg = ModelConfig(name="retinanet", backbone="efficientnet_lite0", pretrained="none", input_size=[SIZE, SIZE],
                      fpn_channels=16, extra_levels=2, head_channels=16, head_convs=1, norm_groups=4, point_offset=0.0)
    check_pair(teacher, build_detector(cfg, len(CLASSES), seed=0), CLASSES, CLASSES, (SIZE, SIZE), "tv")  # 1.6% apart


def test_bad_torchvision_teachers_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"torchvision:retinanet_resnet50_fpn_v2 knows COCO's 80 classes, not 'Sneaker'"):
        torchvision_teacher("torchvision:retinanet_resnet50_fpn_v2", None, ["person", "Sneaker"])
    with pytest.raises(InputError, match=r"teacher.source: 'torchvision:maskrcnn'; valid: torchvision:retinanet"):
        torchvision_teacher("torchvision:maskrcnn", None, ["person"])
    _, path = saved_detector("fcos_resnet50_fpn", tmp_path)
    with pytest.raises(InputError, match=r"input_size \[320, 320\]: a torchvision teacher needs multiples of 128"):
        torchvision_teacher("torchvision:fcos_resnet50_fpn", path, ["person"], ModelConfig(input_size=[320, 320]))
    with pytest.raises(InputError, match=r"fcos_resnet50_fpn.pth: not retinanet_resnet50_fpn's weights"):
        torchvision_teacher("torchvision:retinanet_resnet50_fpn", path, ["person"], ModelConfig(input_size=[SIZE, SIZE]))


def test_coco_categories_are_torchvisions_91():
    names = coco_categories("fcos_resnet50_fpn")
    assert len(names) == 91 and names[1] == "person" and names[0] == "__background__"
    assert np.sum([n == "N/A" for n in names]) == 10
