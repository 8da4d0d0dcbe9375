"""The direct training commands refuse to resume or reuse a run trained with other settings."""

import pytest

from deploy.errors import InputError
from pipeline.config import load_config
from pipeline.stages.train import train_role
from tests.conftest import REPO

DEFAULT = REPO / "configs" / "pipelines" / "default.yaml"
TINY = {"input_size": "[128,128]", "fpn_channels": 16, "head_channels": 16, "head_convs": 1,
        "backbone": "efficientnet_lite0"}


def config(tiny_scenes, tmp_path, *extra):
    return load_config(DEFAULT, [f"data.root={tiny_scenes}", "data.generator.size=tiny", f"runs_dir={tmp_path}",
                                 "teacher.checkpoint=null", *(f"teacher.model.{k}={v}" for k, v in TINY.items()),
                                 "teacher.train.max_steps=1", "teacher.train.batch_size=4", "teacher.train.workers=0",
                                 "teacher.train.max_train_images=0", "teacher.train.max_val_images=4", *extra])


@pytest.mark.slow
def test_a_finished_teacher_with_other_settings_is_refused_not_reported(tiny_scenes, tmp_path, capsys):
    """Before: `python -m pipeline.stages.train --role teacher --resume teacher.train.lr=0.5` on a finished run said
    "already trained" and kept the old model (rc 0)."""
    train_role(config(tiny_scenes, tmp_path), "teacher", resume=True, progress=False)
    with pytest.raises(InputError, match=r"teacher/last.pt: trained with other settings "
                                         r"\(teacher.train.lr: 0.001 there, 0.5 now\)"):
        train_role(config(tiny_scenes, tmp_path, "teacher.train.lr=0.5"), "teacher", resume=True, progress=False)
    with pytest.raises(InputError, match=r"teacher.model.head_channels: 16 there, 32 now"):
        train_role(config(tiny_scenes, tmp_path, "teacher.model.head_channels=32"), "teacher", resume=True,
                   progress=False)
    # Settings that do not change what was learned (how often to log or validate) may differ.
    capsys.readouterr()
    train_role(config(tiny_scenes, tmp_path, "teacher.train.log_every=5"), "teacher", resume=True, progress=False)
    assert "already trained" in capsys.readouterr().out


def test_a_run_monitored_on_another_split_is_not_resumed(tmp_path):
    # best.pt's AP would compare a val figure with a selection-split one across the resume
    from dataclasses import asdict

    from distill.checkpoint import save_checkpoint
    from distill.models.config import ModelConfig
    from distill.settings import TrainConfig
    from pipeline.reuse import changed_setting

    path = tmp_path / "last.pt"
    stored = asdict(TrainConfig())
    del stored["monitor"]  # a checkpoint from before the setting: monitored val
    save_checkpoint(path, {"model": {}, "train": stored, "config": asdict(ModelConfig())})
    assert changed_setting(path, "student", TrainConfig(), ModelConfig()) is None
    assert changed_setting(path, "student", TrainConfig(monitor="select"), ModelConfig()) == \
        "student.train.monitor: 'val' there, 'select' now"
    assert changed_setting(path, "student", TrainConfig(eval_every=2), ModelConfig()) is None  # run-only
