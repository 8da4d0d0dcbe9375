"""The selection split: the last N training images, held out of every training stage; bad settings refused."""

import json

import pytest

from deploy.errors import InputError
from distill.settings import TrainConfig
from pipeline.config import ConfigError, DataConfig, load_config
from pipeline.stages.data import check_schedule_fits, load_split, run_data
from tests.conftest import REPO

DEFAULT = REPO / "configs" / "pipelines" / "default.yaml"


def test_the_selection_split_is_the_last_images_and_disjoint_from_train(tiny_scenes, tmp_path):
    data = DataConfig(root=str(tiny_scenes), select_images=10)
    everything = load_split(DataConfig(root=str(tiny_scenes)), "train")
    train, select = load_split(data, "train"), load_split(data, "select")
    ids = [image["id"] for image in everything.images]
    assert [i["id"] for i in select.images] == ids[-10:] and [i["id"] for i in train.images] == ids[:-10]
    assert not {i["file_name"] for i in train.images} & {i["file_name"] for i in select.images}
    assert load_split(data, "select").images == select.images  # deterministic: the file's order
    assert load_split(data, "val").images == load_split(DataConfig(root=str(tiny_scenes)), "val").images
    # what the selection split evaluates against holds its own images' boxes only
    assert {a["image_id"] for a in select.to_coco_dict()["annotations"]} <= set(ids[-10:])
    stats = json.loads((tmp_path / "stats.json").read_text()) if run_data(data, tmp_path, progress=False) else None
    assert stats["stats"]["train"]["images"] == len(ids) - 10 and stats["stats"]["select"]["images"] == 10


def test_the_distill_stage_trains_on_the_train_split_less_the_selection(monkeypatch, tiny_scenes, tiny_model, tmp_path):
    """What the trainer is handed (the ablation and the pipeline's distill stage both come through here)."""
    import distill.trainer
    import pipeline.stages.distill as distill_stage
    from tests.pipeline.test_ablation import tiny_config

    seen = {}

    def record(student, distiller, cfg, train_set, *args, **kwargs):
        seen["train"] = [i["id"] for i in train_set.images]
        return {"AP": 0.0}

    monkeypatch.setattr(distill.trainer, "train", record)  # distill_student imports it when it runs
    cfg = tiny_config(tiny_scenes, "data.select_images=10", f"runs_dir={tmp_path}")
    distill_stage.distill_student(cfg, str(tiny_model[2]), resume=False, progress=False)
    held_out = {i["id"] for i in load_split(cfg.data, "select").images}
    assert seen["train"] and len(held_out) == 10 and not held_out & set(seen["train"])


def test_a_selection_split_that_leaves_too_little_is_one_line(tiny_scenes):
    total = len(load_split(DataConfig(root=str(tiny_scenes)), "train").images)
    with pytest.raises(InputError, match=rf"data.select_images: {total} of the {total} training images .* leaves none"):
        load_split(DataConfig(root=str(tiny_scenes), select_images=total), "train")
    with pytest.raises(InputError, match="data.select_images: 0, so there is no selection split"):
        load_split(DataConfig(root=str(tiny_scenes)), "select")
    data = DataConfig(root=str(tiny_scenes), select_images=40)
    with pytest.raises(InputError, match=r"data.select_images: 40 leaves 8 training images, fewer than "
                                         r"student.train.max_train_images \(20\)"):
        check_schedule_fits(data, TrainConfig(batch_size=4, max_train_images=20), "student", 8)
    with pytest.raises(InputError, match=r"fewer than teacher.train.batch_size \(16\)"):
        check_schedule_fits(data, TrainConfig(batch_size=16), "teacher", 8)
    check_schedule_fits(data, TrainConfig(batch_size=4, max_train_images=8), "student", 8)
    # without a selection split, max_train_images above the split's size still means all of it
    check_schedule_fits(DataConfig(root=str(tiny_scenes)), TrainConfig(max_train_images=10_000), "student", 8)


@pytest.mark.parametrize("overrides, message", [
    (["data.select_images=-1"], "'data.select_images' must be >= 0, got -1"),
    (["data.generator.long_tail_ratio=0.5"], "'data.generator.long_tail_ratio' must be >= 1.0, got 0.5"),
    (["data=configs/datasets/coco.yaml", "data.generator.long_tail_ratio=50"],
     "'data.generator' is not set in this config, so 'data.generator.long_tail_ratio' has nothing to change"),
])
def test_bad_study_settings_are_one_line_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT, overrides)


@pytest.mark.slow
def test_monitor_select_draws_the_curve_on_the_selection_split_and_keeps_val_for_the_end(tiny_scenes, tiny_model,
                                                                                         tmp_path):
    from pipeline.stages.distill import distill_student
    from tests.pipeline.test_ablation import tiny_config

    cfg = tiny_config(tiny_scenes, "data.select_images=10", f"runs_dir={tmp_path}", "distill.method=none",
                      "student.train.max_steps=0", "student.train.max_train_images=8", "student.train.epochs=2",
                      "student.train.monitor=select")
    metrics = distill_student(cfg, str(tiny_model[2]), resume=False, progress=False)
    out = cfg.run_dir / "distill"
    evaluations = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" not in e]
    # each epoch on the 10 held-out images (best.pt follows them), then all of val once, for metrics.json
    assert [(e["epoch"], "select" in e, e.get("select_images") or e.get("val_images")) for e in evaluations] == \
        [(1, True, 10), (2, True, 10), (2, False, len(load_split(cfg.data, "val").images))]
    written = json.loads((out / "metrics.json").read_text())["artifacts"]["pytorch"]
    assert written["AP"] == metrics["AP"] == evaluations[-1]["val"]["AP"]
    assert (out / "best.pt").is_file()

    with pytest.raises(InputError, match="student.train.monitor: select evaluates on the selection split, and "
                                         "data.select_images is 0"):
        distill_student(tiny_config(tiny_scenes, f"runs_dir={tmp_path / 'b'}", "student.train.monitor=select"),
                        str(tiny_model[2]), resume=False, progress=False)
