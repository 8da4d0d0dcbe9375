import json
import os
import subprocess
import sys

import pytest
import torch

from deploy.errors import InputError
from distill.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from distill.losses.detection import make_detection_loss
from distill.models.detector import ModelConfig, build_detector
from distill.settings import NonFiniteLoss, TrainConfig
from distill.trainer import _truncate_log, train
from pipeline.config import DataConfig
from pipeline.stages.data import load_split
from tests.conftest import REPO

SMALL = dict(backbone="efficientnet_lite0", pretrained="imagenet", input_size=[128, 128],
             fpn_channels=32, head_channels=32, head_convs=1)
FAST = dict(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0,
            schedule="cosine", augment=["hflip", "photometric"], workers=0, log_every=1)


@pytest.fixture(scope="module")
def splits(tiny_scenes):
    data = DataConfig(root=str(tiny_scenes))
    return load_split(data, "train"), load_split(data, "val")


def run(splits, out_dir, resume=False, loss_fn=None, **train_kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL)
    model = build_detector(cfg, num_classes=10)
    tcfg = TrainConfig(**{**FAST, **train_kw})
    metrics = train(model, loss_fn or make_detection_loss(cfg), tcfg, *splits, out_dir, (128, 128),
                    {"config": {}, "classes": splits[0].class_names}, resume=resume, progress=False)
    return model, metrics


def losses(out_dir):
    return [r["loss"] for r in map(json.loads, (out_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_the_stage(splits, tmp_path):
    _, metrics = run(splits, tmp_path, epochs=2)
    curve = losses(tmp_path)
    assert len(curve) == 24  # 2 epochs of 48 images in batches of 4
    assert sum(curve[-4:]) / 4 < 0.85 * sum(curve[:4]) / 4
    for name in ("last.pt", "best.pt", "metrics.json", "predictions.json"):
        assert (tmp_path / name).is_file()
    assert metrics["num_images"] == 24 and 0.0 <= metrics["AP"] <= 1.0


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(splits, tmp_path, capsys):
    straight, _ = run(splits, tmp_path / "a", max_steps=4)
    run(splits, tmp_path / "b", resume=True, max_steps=2)
    assert "no checkpoint at" in capsys.readouterr().out  # a resume with nothing to resume says so
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    resumed, _ = run(splits, tmp_path / "b", resume=True, max_steps=4)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # the log was cut back to step 2 on resume


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_term_keeping_the_last_good_checkpoint(splits, tmp_path):
    gfl, calls = make_detection_loss(ModelConfig(**SMALL)), []

    def poisoned(model, images, targets):
        out = gfl(model, images, targets)
        calls.append(1)
        if len(calls) == 3:
            out["loss_dfl"] = out["loss_dfl"] * float("nan")
        return out

    with pytest.raises(NonFiniteLoss, match="step 2: loss term 'loss_dfl' is nan; "
                                            "training stopped: last.pt .* holds step 2"):
        run(splits, tmp_path, loss_fn=poisoned, max_steps=6, save_every_steps=1)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    # A resume would replay the same seeded steps into the same NaN: it is refused, naming the marker.
    with pytest.raises(NonFiniteLoss, match="diverged.json: this run diverged before .step 2: loss term 'loss_dfl'"):
        run(splits, tmp_path, resume=True, max_steps=6)
    run(splits, tmp_path, max_steps=1)  # a fresh start clears the marker
    assert not (tmp_path / "diverged.json").exists()


@pytest.mark.slow
def test_weights_gone_non_finite_under_a_finite_loss_are_never_saved(splits, tmp_path):
    """An optimizer step can blow the weights up while its loss was finite; the checkpoint after that step
    must not replace the last one with finite weights."""
    gfl, calls = make_detection_loss(ModelConfig(**SMALL)), []

    def blow_up(model, images, targets):
        out = gfl(model, images, targets)
        calls.append(1)
        if len(calls) == 3:  # sqrt at 0: a term worth 0 whose gradient is not finite, so the update is NaN
            out["loss_qfl"] = out["loss_qfl"] + torch.sqrt(0 * next(model.parameters()).sum())
        return out

    with pytest.raises(NonFiniteLoss, match="step 3: the weights became non-finite; "
                                            "training stopped: last.pt .* holds step 2"):
        run(splits, tmp_path, loss_fn=blow_up, max_steps=6, save_every_steps=1)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_of_another_architecture_names_keys_and_shapes(tmp_path):
    model = build_detector(ModelConfig(**{**SMALL, "pretrained": "none"}), num_classes=10)
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict()})
    wider = build_detector(ModelConfig(**{**SMALL, "pretrained": "none", "head_channels": 48}), num_classes=10)
    with pytest.raises(InputError) as e:
        load_model_state(wider, load_checkpoint(tmp_path / "c.pt")["model"], "c.pt")
    assert "architecture differs" in str(e.value)
    assert "head.cls_tower.0.weight checkpoint (32, 32, 3, 3) vs model (48, 32, 3, 3)" in str(e.value)


def test_truncated_and_missing_checkpoints(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.zeros(1000)}})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.pt: cannot be read as a checkpoint, truncated"):
        load_checkpoint(tmp_path / "t.pt")
    with pytest.raises(InputError, match="checkpoint not found: .*none.pt"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.slow
def test_two_process_gloo_ddp_writes_one_checkpoint(tiny_scenes, tmp_path):
    overrides = [f"data.root={tiny_scenes}", "data.generator.size=tiny", f"runs_dir={tmp_path}",
                 *(f"teacher.model.{k}={json.dumps(v)}" for k, v in SMALL.items()),
                 "teacher.train.max_steps=2", "teacher.train.batch_size=2", "teacher.train.workers=0",
                 "teacher.train.max_train_images=0", "teacher.train.log_every=1", "teacher.train.device=cpu",
                 "teacher.checkpoint=null"]  # train one, not the shipped teacher
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pipeline.stages.train", "--no-progress", "--role", "teacher", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "default" / "teacher"
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 and state["train"]["batch_size"] == 2
    assert [r["img_s"] > 0 for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
            if "loss" in r] == [True, True]


@pytest.mark.slow
def test_a_run_stopped_before_its_final_evaluation_evaluates_on_resume(splits, tmp_path):
    run(splits, tmp_path, max_steps=2)
    (tmp_path / "metrics.json").unlink()  # as if killed after the last checkpoint, before the evaluation
    _, metrics = run(splits, tmp_path, resume=True, max_steps=2)
    assert metrics["num_images"] == 24 and (tmp_path / "metrics.json").is_file()


def test_a_seeded_build_does_not_depend_on_earlier_rng_draws():
    cfg = ModelConfig(**{**SMALL, "pretrained": "none"})
    a = build_detector(cfg, 10, seed=3).state_dict()
    torch.rand(1000)  # what an earlier model, teacher or training run in the same process would draw
    b = build_detector(cfg, 10, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_detector(cfg, 10, seed=4).state_dict()
    assert not torch.equal(a["head.cls_out.weight"], c["head.cls_out.weight"])


@pytest.mark.slow
def test_the_trainer_tells_the_loss_its_epoch(splits, tmp_path):
    """The distiller's until_epoch depends on it: every step's loss sees the epoch it belongs to, also
    after a resume in mid-epoch."""
    seen = []

    class Recording:
        def __init__(self):
            self.gfl, self.epoch = make_detection_loss(ModelConfig(**SMALL)), None

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __call__(self, model, images, targets):
            seen.append(self.epoch)
            return self.gfl(model, images, targets)

    short = dict(loss_fn=Recording(), epochs=3, max_train_images=8, eval_every=3, max_val_images=4)
    run(splits, tmp_path, max_steps=3, **short)
    run(splits, tmp_path, resume=True, **{**short, "loss_fn": Recording()})
    assert seen == [0, 0, 1] + [1, 2, 2]  # 2 steps per epoch, resumed after the first step of epoch 1


def test_the_progress_bar_counts_the_steps_an_epoch_will_run():
    """A 3-step run over 12-step epochs showed 0/12 and an ETA for 12."""
    from distill.trainer import steps_in_epoch

    assert steps_in_epoch(0, 12, 3) == 3
    assert [steps_in_epoch(e, 10, 25) for e in range(3)] == [10, 10, 5]
    assert steps_in_epoch(1, 12, 12) == 0


def test_a_resume_drops_later_steps_and_a_line_cut_by_a_kill(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 10, "loss": 2.0}\n{"step": 20, "epoch": 1, "val": {}}\n\n'
                   '{"step": 30, "loss": 1.0}\n{"step": 4')  # the last line cut by a kill
    _truncate_log(log, 20)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [10, 20]
