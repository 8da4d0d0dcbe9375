import json
import os
import subprocess
import sys

import pytest
import torch

from deploy.errors import InputError
from distill.distiller import Distiller, check_pair
from distill.losses.bckd import bckd_loc_loss
from distill.models.detector import ModelConfig, build_detector
from distill.settings import DistillConfig
from tests.conftest import REPO

TEACHER = dict(backbone="efficientnet_lite0", pretrained="none", input_size=[64, 64], fpn_channels=32,
               head_channels=32, head_convs=2)
STUDENT = dict(TEACHER, fpn_channels=16, head_channels=16, head_convs=1)
CLASSES = [f"c{i}" for i in range(3)]


def pair(**teacher_kw):
    torch.manual_seed(0)
    return (build_detector(ModelConfig(**{**TEACHER, **teacher_kw}), 3),
            build_detector(ModelConfig(**STUDENT), 3))


def batch():
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 20, 60, 60], [0, 0, 16, 16]]), "labels": torch.tensor([0, 2])}]
    return images, targets


@pytest.mark.slow
def test_pair_check_refuses_other_levels_and_other_classes():
    teacher, student = pair(extra_levels=2)
    with pytest.raises(InputError, match=r"differ in strides: teacher \[8, 16, 32, 64, 128\] vs student \[8, 16, 32\]"):
        check_pair(teacher, student, CLASSES, CLASSES, (64, 64), "t.pt")
    teacher, student = pair()
    with pytest.raises(InputError, match="t.pt: teacher classes"):
        check_pair(teacher, student, ["x", "y", "z"], CLASSES, (64, 64), "t.pt")
    check_pair(teacher, student, CLASSES, CLASSES, (64, 64), "t.pt")  # same layout, widths differ: fine


@pytest.mark.parametrize("method, terms, expected", [
    ("none", ["cls", "loc"], set()),
    ("bckd", ["cls", "loc"], {"bckd_cls", "bckd_loc"}),
    ("bckd", ["cls"], {"bckd_cls"}),
    ("bckd", ["loc"], {"bckd_loc"}),
    ("kd", ["cls", "loc"], {"kd"}),
    ("kd_pos", ["cls", "loc"], {"kd_pos"}),
    ("ld", ["cls", "loc"], {"ld"}),
    ("bckd", ["cls", "loc", "kd"], {"bckd_cls", "bckd_loc", "kd"}),
])
@pytest.mark.slow
def test_terms_are_named_weighted_and_only_the_student_learns(method, terms, expected):
    teacher, student = pair()
    cfg = DistillConfig(method=method, terms=terms, cls_weight=1.0, loc_weight=4.0, kd_weight=0.7)
    distiller = Distiller(teacher, ModelConfig(**STUDENT), cfg, torch.device("cpu"))
    losses = distiller(student.train(), *batch())
    names = {k.removeprefix("loss_") for k in losses if k.startswith("loss_")} - {"qfl", "dfl", "giou"}
    assert names == expected
    for name in expected:
        weight = {"bckd_cls": 1.0, "bckd_loc": 4.0, "kd": 0.7, "kd_pos": 10.0, "ld": cfg.ld_weight}[name]
        torch.testing.assert_close(losses[f"loss_{name}"].detach(), losses[f"raw_{name}"] * weight)
        assert losses[f"raw_{name}"].item() > 0
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training


@pytest.mark.slow
def test_positive_levels_only_masks_levels_without_positives():
    teacher, student = pair()
    student.train()
    base = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(), torch.device("cpu"))
    masked = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(positive_levels_only=True), torch.device("cpu"))
    images, targets = batch()
    a, b = base(student, images, targets), masked(student, images, targets)
    assert 0 < b["raw_bckd_cls"].item() < a["raw_bckd_cls"].item()  # small boxes: some levels hold no positive


@pytest.mark.slow
def test_loc_positives_only_keeps_the_positive_locations_share():
    teacher, student = pair()
    base = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(), torch.device("cpu"))
    masked = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(loc_positives_only=True), torch.device("cpu"))
    images, targets = batch()
    a, b = base(student, images, targets), masked(student, images, targets)
    out = student(images)
    assigned = base.loss(out, targets)[1]
    pos = assigned.labels >= 0
    n, _, c = out["cls_logits"].shape
    s_logits = out["cls_logits"].reshape(-1, c)
    t_logits = teacher(images)["cls_logits"].reshape(-1, c)
    s_boxes, t_boxes = base._boxes(student, out), base._boxes(teacher, teacher(images))
    by_hand = bckd_loc_loss(s_boxes[pos], t_boxes[pos], s_logits[pos], t_logits[pos], avg_factor=assigned.num_pos)
    torch.testing.assert_close(b["raw_bckd_loc"], by_hand.detach())
    assert 0 < b["raw_bckd_loc"].item() < a["raw_bckd_loc"].item()
    torch.testing.assert_close(b["raw_bckd_cls"], a["raw_bckd_cls"])  # the cls term is untouched


@pytest.mark.slow
def test_loc_detached_features_trains_the_regression_branch_only():
    """Same loss values as the plain term; its gradient reaches the head's regression branch and stops
    at the FPN, where the plain term's does not."""
    teacher, student = pair()
    student.eval()  # no BatchNorm update between the two forwards
    images, targets = batch()
    grads = {}
    for detached in (False, True):
        student.zero_grad()
        cfg = DistillConfig(terms=["loc"], loc_detached_features=detached)
        losses = Distiller(teacher, ModelConfig(**STUDENT), cfg, torch.device("cpu"))(student, images, targets)
        losses["loss_bckd_loc"].backward()
        grads[detached] = ({n: p.grad.abs().sum().item() if p.grad is not None else 0.0
                            for n, p in student.named_parameters()}, losses["raw_bckd_loc"])
    (plain, plain_loss), (detached, detached_loss) = grads[False], grads[True]
    torch.testing.assert_close(plain_loss, detached_loss)
    for name in ("fpn.inner_blocks.0.0.weight", "fpn.layer_blocks.0.0.weight"):
        assert plain[name] > 0 and detached[name] == 0
    assert sum(v for n, v in detached.items() if n.startswith("backbone.")) == 0
    assert detached["head.reg_out.weight"] > 0 and detached["head.reg_tower.0.weight"] > 0
    assert detached["head.cls_out.weight"] == 0  # the IoU term's weight v_i is detached


@pytest.mark.slow
def test_until_epoch_drops_the_distillation_terms_and_the_teacher_after_epoch_k():
    teacher, student = pair()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    distiller = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(until_epoch=2), torch.device("cpu"))
    for epoch, distilled, teacher_calls in ((0, True, 1), (1, True, 2), (2, False, 2), (5, False, 2)):
        distiller.set_epoch(epoch)
        losses = distiller(student.train(), *batch())
        assert ("loss_bckd_cls" in losses) is distilled and ("loss_bckd_loc" in losses) is distilled
        assert len(calls) == teacher_calls  # no teacher forward once distillation stops
        assert {"loss_qfl", "loss_dfl", "loss_giou"} <= set(losses)


@pytest.mark.slow
def test_distill_cli_runs_a_few_steps(tiny_scenes, tmp_path):
    # teacher.checkpoint=null: train the tiny teacher and distil from it, not from the shipped one
    common = [f"data.root={tiny_scenes}", "data.generator.size=tiny", f"runs_dir={tmp_path}", "teacher.checkpoint=null"]
    small = {"backbone": "efficientnet_lite0", "input_size": [128, 128], "fpn_channels": 32, "head_convs": 1}
    train = {"max_steps": 2, "batch_size": 4, "workers": 0, "max_train_images": 0, "log_every": 1}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    teacher = [*common, *(f"teacher.model.{k}={json.dumps(v)}" for k, v in {**small, "head_channels": 32}.items()),
               *(f"teacher.train.{k}={json.dumps(v)}" for k, v in train.items())]
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--no-progress", *teacher],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    student = [*common, *(f"student.model.{k}={json.dumps(v)}" for k, v in {**small, "head_channels": 16}.items()),
               *(f"student.train.{k}={json.dumps(v)}" for k, v in train.items())]
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.distill", "--no-progress", *student],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "default" / "distill"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"raw_bckd_cls", "loss_bckd_cls", "raw_bckd_loc", "loss_bckd_loc", "loss_qfl"} <= set(records[0])
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["distill"]["method"] == "bckd" and state["config"]["head_channels"] == 16
    assert not any(k.startswith("teacher") for k in state["model"])  # only the student is saved
    assert (out / "metrics.json").is_file()
    # A teacher of another input size is refused before any training.
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.distill", "--no-progress", *student,
                           "student.model.input_size=[160,160]", "run=other",
                           f"teacher.checkpoint={tmp_path / 'default/teacher/last.pt'}",
                           "teacher.checkpoint_sha256=null"],  # the default config's hash is the shipped file's
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2 and "differ in locations per level" in proc.stderr


@pytest.mark.slow
def test_distillation_steps_leave_the_teacher_bit_identical(tiny_scenes, tmp_path):
    from distill.settings import TrainConfig
    from distill.trainer import train
    from pipeline.config import DataConfig
    from pipeline.stages.data import load_split

    data = DataConfig(root=str(tiny_scenes))
    splits = load_split(data, "train"), load_split(data, "val")
    size = dict(TEACHER, input_size=[128, 128])
    torch.manual_seed(0)
    teacher = build_detector(ModelConfig(**size), 10)
    student = build_detector(ModelConfig(**dict(STUDENT, input_size=[128, 128])), 10)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = Distiller(teacher, ModelConfig(**dict(STUDENT, input_size=[128, 128])), DistillConfig(),
                          torch.device("cpu"))
    cfg = TrainConfig(epochs=1, max_steps=3, batch_size=4, workers=0, warmup_steps=0, optimizer="adamw", lr=1e-3)
    train(student, distiller, cfg, *splits, tmp_path, (128, 128), {"classes": splits[0].class_names}, progress=False)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    optimised = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert optimised == sum(1 for p in student.parameters() if p.requires_grad)  # no teacher parameter
    assert set(state["model"]) == set(student.state_dict())


@pytest.mark.slow
def test_two_process_gloo_distillation(tiny_scenes, tmp_path):
    # teacher.checkpoint=null: train the tiny teacher and distil from it, not from the shipped one
    common = [f"data.root={tiny_scenes}", "data.generator.size=tiny", f"runs_dir={tmp_path}", "teacher.checkpoint=null"]
    small = {"backbone": "efficientnet_lite0", "input_size": [128, 128], "fpn_channels": 32, "head_convs": 1}
    train = {"max_steps": 2, "batch_size": 2, "workers": 0, "max_train_images": 0, "log_every": 1, "device": "cpu"}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    teacher = [*common, *(f"teacher.model.{k}={json.dumps(v)}" for k, v in {**small, "head_channels": 32}.items()),
               *(f"teacher.train.{k}={json.dumps(v)}" for k, v in train.items())]
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--no-progress", *teacher],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    student = [*common, *(f"student.model.{k}={json.dumps(v)}" for k, v in {**small, "head_channels": 16}.items()),
               *(f"student.train.{k}={json.dumps(v)}" for k, v in train.items())]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "pipeline.stages.distill", "--no-progress", *student],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "default" / "distill"
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2


@pytest.mark.slow
def test_diagnose_bckd_term_mass_against_the_loss_functions():
    from distill.losses.bckd import bckd_cls_loss
    from pipeline.tools.diagnose_bckd import summary, term_mass

    teacher, student = pair()
    images, targets = batch()
    sums = term_mass(teacher, student, ModelConfig(**STUDENT), images, targets)
    s_out, t_out = student(images), teacher(images)
    c = s_out["cls_logits"].shape[-1]
    s_logits, t_logits = s_out["cls_logits"].reshape(-1, c), t_out["cls_logits"].reshape(-1, c)
    s_boxes, t_boxes = student.head.decode(s_out)[0].reshape(-1, 4), teacher.head.decode(t_out)[0].reshape(-1, 4)
    assert sums["cls_all"] == pytest.approx(bckd_cls_loss(s_logits, t_logits, avg_factor=1).item(), rel=1e-5)
    assert sums["loc_all"] == pytest.approx(bckd_loc_loss(s_boxes, t_boxes, s_logits, t_logits, avg_factor=1).item(),
                                            rel=1e-5)
    shares = summary(sums)
    assert 0 < shares["positive_share"] < 1 and 0 < shares["loc_mass_on_positives"] < 1
    same = summary(term_mass(teacher, teacher, ModelConfig(**TEACHER), images, targets))
    assert same["cls_mass_on_positives"] == 0.0 and same["teacher_better_share"] == 0.0
    assert same["iou_teacher_gt"] == same["iou_student_gt"]


@pytest.mark.slow
def test_bckd_plus_kd_adds_softmax_kd_at_its_own_weight_to_the_unchanged_bckd_terms():
    teacher, student = pair()
    images, targets = batch()
    both = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(terms=["cls", "loc", "kd"], kd_weight=0.3),
                     torch.device("cpu"))(student.train(), images, targets)
    bckd = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(), torch.device("cpu"))(student, images, targets)
    kd = Distiller(teacher, ModelConfig(**STUDENT), DistillConfig(method="kd"),
                   torch.device("cpu"))(student, images, targets)
    for name in ("bckd_cls", "bckd_loc"):
        torch.testing.assert_close(both[f"loss_{name}"], bckd[f"loss_{name}"])
    torch.testing.assert_close(both["raw_kd"], kd["raw_kd"])  # dense KD, as method kd computes it
    torch.testing.assert_close(both["loss_kd"].detach(), 0.3 * kd["raw_kd"])


def test_bckd_cls_on_negatives_only_drops_the_positive_locations():
    from distill.losses.bckd import bckd_cls_loss
    from distill.losses.detection import head_loss

    teacher, student = pair()
    images, targets = batch()
    cfg = DistillConfig(terms=["cls"], cls_region="negatives")
    losses = Distiller(teacher, ModelConfig(**STUDENT), cfg, torch.device("cpu"))(student.train(), images, targets)
    out, t_out = student(images), teacher(images)
    _, assigned = head_loss(ModelConfig(**STUDENT))(out, targets)
    n, a, c = out["cls_logits"].shape
    s, t = out["cls_logits"].reshape(n * a, c), t_out["cls_logits"].reshape(n * a, c)
    neg = (assigned.labels < 0).float() * (assigned.valid.float() if assigned.valid is not None else 1)
    assert (assigned.labels >= 0).sum() > 0  # there are positives to leave out
    torch.testing.assert_close(losses["raw_bckd_cls"], bckd_cls_loss(s, t, neg, assigned.num_pos).detach())
    everywhere = bckd_cls_loss(s, t, assigned.valid.float() if assigned.valid is not None else None, assigned.num_pos)
    assert losses["raw_bckd_cls"].item() < everywhere.item()
