"""mmdetection GFL checkpoints as teachers: the key mapping (always runs), and parity with mmdetection's
own forward where mmdet is installed (the optional extra `mmdet`; it skips with the reason elsewhere)."""

import importlib.util
import re
import sys
import types

import pytest
import torch

from deploy.errors import InputError
from deploy.files import sha256_file
from distill.models.detector import ModelConfig, build_detector
from distill.models.mmdet import mmdet_to_edgekd, read_mmdet_checkpoint
from distill.teachers import class_rows, load_teacher
from pipeline.config import PipelineConfig, RoleConfig, load_config
from tests.conftest import REPO

R101 = load_config(REPO / "configs/pipelines/coco_gfl_r101_r50_mmdet.yaml").teacher.model


def teacher_config(checkpoint, fmt="edgekd", model=None, sha256=None, source=None) -> PipelineConfig:
    """A pipeline config whose teacher section is these settings: what load_teacher reads."""
    teacher = RoleConfig(model=model or ModelConfig(), checkpoint=str(checkpoint) if checkpoint else None,
                         checkpoint_sha256=sha256, format=fmt, source=source)
    return PipelineConfig(teacher=teacher)


def mmdet_names(edgekd_state: dict, convs: int) -> dict:
    """An edgekd GFL state dict under the names mmdetection gives the same tensors (written from mmdet's
    module structure: ResNet as torchvision's, FPN lateral_convs / fpn_convs with ConvModule's .conv,
    GFLHead's cls_convs / reg_convs with .conv and .gn, gfl_cls, gfl_reg, scales, integral.project)."""
    out = {}
    for key, value in edgekd_state.items():
        parts = key.split(".")
        if key.startswith("backbone.body."):
            name = "backbone." + key.removeprefix("backbone.body.")
        elif key.startswith("fpn.inner_blocks."):
            name = f"neck.lateral_convs.{parts[2]}.conv.{parts[4]}"
        elif key.startswith("fpn.layer_blocks."):
            name = f"neck.fpn_convs.{parts[2]}.conv.{parts[4]}"
        elif key.startswith("fpn.extra_blocks."):
            name = f"neck.fpn_convs.{3 if parts[2] == 'p6' else 4}.conv.{parts[3]}"
        elif key.startswith("head.") and "_tower." in key:
            branch, index = parts[1].removesuffix("_tower"), int(parts[2])
            name = f"bbox_head.{branch}_convs.{index // 3}.{'conv' if index % 3 == 0 else 'gn'}.{parts[3]}"
        elif key.startswith("head.cls_out."):
            name = f"bbox_head.gfl_cls.{parts[2]}"
        elif key.startswith("head.reg_out."):
            name = f"bbox_head.gfl_reg.{parts[2]}"
        elif key.startswith("head.scales."):
            name = f"bbox_head.scales.{parts[2]}.scale"
        else:
            raise AssertionError(key)
        out[name] = value
    out["bbox_head.integral.project"] = torch.linspace(0, 16, 17)
    return out


@pytest.mark.slow
def test_the_mmdetection_r101_keys_all_map_and_load_strictly():
    edgekd = build_detector(R101, num_classes=80)
    state = edgekd.state_dict()
    named = mmdet_names(state, R101.head_convs)
    assert len(named) == 674  # as the feasibility study counted: 673 after integral.project
    mapped = mmdet_to_edgekd(named, "gfl.pth")
    assert len(mapped) == 673 and mapped.keys() == state.keys()
    assert all(mapped[k] is state[k] for k in state)  # every tensor lands where it came from
    build_detector(R101, num_classes=80).load_state_dict(mapped, strict=True)


def test_keys_that_do_not_map_are_named():
    named = {"backbone.layer2.0.conv2.conv_offset.weight": torch.zeros(1), "bbox_head.gfl_cls.weight": torch.zeros(1)}
    with pytest.raises(InputError, match=r"dcn.pth: 1 mmdetection keys have no counterpart .*conv_offset"):
        mmdet_to_edgekd(named, "dcn.pth")


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_checkpoint_files_classes_and_what_cannot_be_read(tmp_path):
    small = ModelConfig(name="gfl", backbone="resnet18", pretrained="none", input_size=[128, 128], fpn_channels=32,
                        extra_levels=2, head_channels=32, head_convs=1, norm_groups=8, point_offset=0.0,
                        relu_before_p7=False)
    named = mmdet_names(build_detector(small, 4).state_dict(), 1)
    v2 = _save(tmp_path / "v2.pth", {"state_dict": named, "meta": {"CLASSES": ("cat", "dog", "bird", "fish")}})
    v3 = _save(tmp_path / "v3.pth", {"state_dict": named,
                                     "meta": {"dataset_meta": {"classes": ["cat", "dog", "bird", "fish"]}}})
    for path in (v2, v3):
        assert read_mmdet_checkpoint(path)[1] == ["cat", "dog", "bird", "fish"]
    # The dataset's classes are picked by name, in the dataset's order.
    teacher, info = load_teacher(teacher_config(v3, "mmdet", small), ["fish", "cat"])
    classes = info.classes
    assert classes == ["fish", "cat"] and teacher.head.cls_out.out_channels == 2
    torch.testing.assert_close(teacher.head.cls_out.bias, named["bbox_head.gfl_cls.bias"][[3, 0]])
    with pytest.raises(InputError, match=r"v3.pth: the teacher does not know the dataset's class 'horse'"):
        load_teacher(teacher_config(v3, "mmdet", small), ["cat", "horse"])
    no_classes = _save(tmp_path / "nometa.pth", {"state_dict": named, "meta": {}})
    with pytest.raises(InputError, match=r"nometa.pth: its meta holds no classes"):
        read_mmdet_checkpoint(no_classes)
    mmengine_style = _save(tmp_path / "mmengine.pth", {"state_dict": named, "message_hub": MessageHub()})
    with pytest.raises(InputError, match=r"mmengine.pth: not readable with weights_only=True .*python -m "
                                         r"pipeline.tools.convert_mmdet"):
        read_mmdet_checkpoint(mmengine_style)
    with pytest.raises(InputError, match="teacher.format: mmdet maps GFL checkpoints only"):
        load_teacher(teacher_config(v2, "mmdet", ModelConfig(name="atss")), ["cat"])


class MessageHub:  # an mmengine object pickled into a checkpoint: weights_only=True refuses it
    pass


SMALL = ModelConfig(name="gfl", backbone="resnet18", pretrained="none", input_size=[128, 128], fpn_channels=32,
                    extra_levels=2, head_channels=32, head_convs=1, norm_groups=8, point_offset=0.0,
                    relu_before_p7=False)


@pytest.mark.slow
def test_files_that_are_not_whole_mmdetection_checkpoints_are_one_line_each(tmp_path):
    named = mmdet_names(build_detector(SMALL, 10).state_dict(), 1)
    ten = [f"c{i}" for i in range(10)]
    whole = _save(tmp_path / "whole.pth", {"state_dict": named, "meta": {"CLASSES": ten}})
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": named, "meta": {"CLASSES": ten}}, legacy, _use_new_zipfile_serialization=False)
    cut_legacy = tmp_path / "cut_legacy.pth"
    cut_legacy.write_bytes(legacy.read_bytes()[:300])  # inside its pickles, before any tensor data
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint\n")
    edgekd = _save(tmp_path / "edgekd.pt", {"model": build_detector(SMALL, 2).state_dict(), "config": {"name": "gfl"},
                                            "classes": ["a", "b"]})
    cases = [
        ({"state_dict": {k: v for k, v in named.items() if k.startswith("backbone.")}, "meta": {"CLASSES": ten}},
         r"no GFL classifier \(bbox_head.gfl_cls.weight; its "
         r"\d+ tensors start backbone.conv1.weight.*not a backbone's"),
        ({"state_dict": named, "meta": {"CLASSES": [*ten, "x", "y"]}},
         r"its meta names 12 classes, its head \(bbox_head.gfl_cls.weight\) has 10 rows; name exactly 10"),
        (torch.zeros(3), r"holds a Tensor, not a checkpoint dict"),
    ]
    files = [(_save(tmp_path / f"case{i}.pth", obj), message) for i, (obj, message) in enumerate(cases)]
    files += [(truncated, r"truncated or damaged \(its zip directory "
                          r"is missing\); the converter cannot read it either"),
              (cut_legacy, r"truncated or damaged \(a pickle in it ends early\)"),
              (text, r"not a PyTorch file \(it starts with b'not '"),
              (edgekd, r"an edgekd checkpoint \(it has 'model' and 'config'\), "
                       r"not an mmdetection one; set teacher.format: edgekd")]
    for path, message in files:
        with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: {message}") as error:
            load_teacher(teacher_config(path, "mmdet", SMALL), ["c1"])
        assert "\n" not in str(error.value) and "mmengine" not in str(error.value)
    assert load_teacher(teacher_config(legacy, "mmdet", SMALL), ["c1"])[1].classes == ["c1"]  # pre-1.6 files still read


@pytest.mark.slow
def test_a_stated_hash_is_checked_for_every_teacher_format(tmp_path):
    mmdet = _save(tmp_path / "gfl.pth", {"state_dict": mmdet_names(build_detector(SMALL, 2).state_dict(), 1),
                                         "meta": {"CLASSES": ["a", "b"]}})
    edgekd = _save(tmp_path / "edgekd.pt", {"model": build_detector(SMALL, 2).state_dict(), "config": SMALL.__dict__,
                                            "classes": ["a", "b"]})
    for path, fmt in ((mmdet, "mmdet"), (edgekd, "edgekd")):
        with pytest.raises(InputError, match=rf"{path.name}: SHA-256 [0-9a-f]{{64}} does not match "
                                             r"teacher.checkpoint_sha256 0+ \(a corrupt or other file"):
            load_teacher(teacher_config(path, fmt, SMALL, "0" * 64), ["a", "b"])
        # both classes: an mmdetection teacher is cut to the dataset's, an edgekd file must hold exactly them
        load_teacher(teacher_config(path, fmt, SMALL, sha256_file(path).upper()), ["a", "b"])


@pytest.mark.slow
def test_distilling_from_an_mmdetection_teacher_changes_only_the_student(tmp_path):
    from distill.distiller import Distiller, check_pair
    from distill.settings import DistillConfig

    small = ModelConfig(name="gfl", backbone="resnet18", pretrained="none", input_size=[128, 128], fpn_channels=32,
                        extra_levels=2, head_channels=32, head_convs=1, norm_groups=8, point_offset=0.0,
                        relu_before_p7=False)
    path = _save(tmp_path / "t.pth", {"state_dict": mmdet_names(build_detector(small, 3).state_dict(), 1),
                                      "meta": {"CLASSES": ["a", "b", "c"]}})
    teacher, info = load_teacher(teacher_config(path, "mmdet", small), ["c", "a"])
    classes = info.classes
    student_cfg = ModelConfig(**{**small.__dict__, "backbone": "efficientnet_lite0", "fpn_channels": 16,
                                 "head_channels": 16, "norm_groups": 4})
    student = build_detector(student_cfg, 2, seed=0)
    check_pair(teacher, student, classes, ["c", "a"], (128, 128), str(path))
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = Distiller(teacher, student_cfg, DistillConfig(method="bckd"), torch.device("cpu"))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    targets = [{"boxes": torch.tensor([[4.0, 4, 60, 50]]), "labels": torch.tensor([1])}]
    student.train()
    for _ in range(2):
        losses = distiller(student, torch.randn(1, 3, 128, 128), targets)
        optimizer.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        optimizer.step()
    assert losses["raw_bckd_cls"] > 0 and losses["raw_bckd_loc"] > 0
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_class_rows():
    assert class_rows(["a", "b", "c"], ["c", "a"], "t") == [2, 0]


# ---------------------------------------------------------------------------------------------------
# Against mmdetection itself

MMDET_MISSING = None if importlib.util.find_spec("mmdet") else "mmdetection is not installed (pip install -e .[mmdet])"


@pytest.fixture
def mmdet_models(monkeypatch):
    # mmcv-lite has no compiled ops (mmcv._ext); importing mmdet.models loads them by name, and a dense
    # head's forward never calls one: stand in a module that raises if any op is called.
    ext = types.ModuleType("mmcv._ext")

    def any_op(name):
        if name.startswith("__"):  # module attributes (__file__, __path__) stay absent
            raise AttributeError(name)

        def op(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name} called: the parity test must not need compiled ops")
        return op

    ext.__getattr__ = any_op
    monkeypatch.setitem(sys.modules, "mmcv._ext", ext)
    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS


@pytest.mark.skipif(MMDET_MISSING is not None, reason=MMDET_MISSING or "")
def test_raw_outputs_and_boxes_match_mmdetections_own_forward(mmdet_models):
    from mmdet.structures.bbox import distance2bbox

    cfg = dict(
        type="GFL", data_preprocessor=dict(type="DetDataPreprocessor"),
        backbone=dict(type="ResNet", depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                      norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True, style="pytorch"),
        neck=dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=64, start_level=1,
                  add_extra_convs="on_output", num_outs=5),
        bbox_head=dict(type="GFLHead", num_classes=3, in_channels=64, stacked_convs=2, feat_channels=64,
                       anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8,
                                             scales_per_octave=1, strides=[8, 16, 32, 64, 128]),
                       loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
                       loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25), reg_max=16,
                       loss_bbox=dict(type="GIoULoss", loss_weight=2.0)),
    )
    torch.manual_seed(0)
    theirs = mmdet_models.build(cfg).eval()
    for p in theirs.parameters():  # away from the init's zeros and constants, so every tensor matters
        p.data.normal_(0, 0.05)
    ours_cfg = ModelConfig(name="gfl", backbone="resnet18", pretrained="none", input_size=[256, 256], fpn_channels=64,
                           extra_levels=2, head_channels=64, head_convs=2, norm_groups=32, reg_max=16,
                           point_offset=0.0, relu_before_p7=False)
    ours = build_detector(ours_cfg, num_classes=3).eval()
    ours.load_state_dict(mmdet_to_edgekd(theirs.state_dict(), "mmdet"), strict=True)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        cls_scores, bbox_preds = theirs.bbox_head(theirs.neck(theirs.backbone(x)))
        out = ours(x)
        start = 0
        worst_raw = 0.0
        for cls, reg in zip(cls_scores, bbox_preds):
            n, c, h, w = cls.shape
            ours_cls = out["cls_logits"][:, start : start + h * w].reshape(n, h, w, c).permute(0, 3, 1, 2)
            ours_reg = out["bbox_dists"][:, start : start + h * w].reshape(n, h, w, -1).permute(0, 3, 1, 2)
            worst_raw = max(worst_raw, (ours_cls - cls).abs().max().item(), (ours_reg - reg).abs().max().item())
            start += h * w
        priors = theirs.bbox_head.prior_generator.grid_priors([c.shape[-2:] for c in cls_scores], device="cpu")
        boxes = []
        for anchors, reg, stride in zip(priors, bbox_preds, theirs.bbox_head.prior_generator.strides):
            centers = theirs.bbox_head.anchor_center(anchors)
            distances = theirs.bbox_head.integral(reg.permute(0, 2, 3, 1).reshape(-1, 68)) * stride[0]
            boxes.append(distance2bbox(centers, distances))
        ours_boxes = ours.decode(out)[0][0]
    box_err = (ours_boxes - torch.cat(boxes)).abs().max().item()
    print(f"mmdet {sys.modules['mmdet'].__version__} parity: raw "
          f"outputs max |diff| {worst_raw:.2e}, boxes {box_err:.2e} px")
    assert start == out["cls_logits"].shape[1] and worst_raw < 1e-5
    assert box_err < 1e-3
