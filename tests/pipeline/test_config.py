import pytest

from distill.models.heads import HEAD_NAMES
from pipeline.config import STAGES, ConfigError, PipelineConfig, load_config, to_yaml
from tests.conftest import REPO

DEFAULT = REPO / "configs" / "pipelines" / "default.yaml"


def test_default_config_includes_the_dataset_file():
    cfg = load_config(DEFAULT)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.data.root == "data/fashion-scenes"
    assert cfg.data.generator.size == "default" and cfg.data.generator.min_object_size == 16


def test_overrides_parse_values_as_yaml():
    cfg = load_config(DEFAULT, ["data.generator.seed=7", "data.check_images=false", "stages=[data]",
                                "data.generator.max_occlusion=1", "run=exp1"])
    assert cfg.data.generator.seed == 7 and cfg.data.check_images is False and cfg.stages == ["data"]
    assert cfg.data.generator.max_occlusion == 1.0 and isinstance(cfg.data.generator.max_occlusion, float)
    assert str(cfg.run_dir) == "runs/exp1"


def test_override_with_a_yaml_path_replaces_the_section():
    cfg = load_config(DEFAULT, [f"data={REPO / 'configs/datasets/coco.yaml'}"])
    assert cfg.data.name == "coco" and cfg.data.generator is None
    assert cfg.data.val_annotations == "annotations/instances_val2017.json"


def test_unknown_key_in_file_names_file_key_suggestion_and_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\ndata:\n  roots: data/x\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert str(bad) in msg and "unknown key 'data.roots'" in msg and "did you mean 'root'" in msg
    assert "valid keys: name, root, train_images" in msg and "\n" not in msg


def test_unknown_key_in_an_included_file_names_that_file(tmp_path):
    dataset = tmp_path / "mine.yaml"
    dataset.write_text("root: data/mine\ngenerator:\n  seeed: 3\n")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"data: {dataset}\n")
    with pytest.raises(ConfigError, match=rf"{dataset}: unknown key 'data.generator.seeed' \(did you mean 'seed'"):
        load_config(pipeline)


def test_bad_overrides():
    with pytest.raises(ConfigError, match=r"override 'data.generator.sed=1': unknown key 'data.generator.sed'"):
        load_config(DEFAULT, ["data.generator.sed=1"])
    with pytest.raises(ConfigError, match="'data.generator.seed' must be int, got 'abc'"):
        load_config(DEFAULT, ["data.generator.seed=abc"])
    with pytest.raises(ConfigError, match="'data.generator.size' must be one of tiny, default; got 'huge'"):
        load_config(DEFAULT, ["data.generator.size=huge"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(DEFAULT, ["data.root"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(line"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listed)


def test_printed_config_round_trips(tmp_path):
    cfg = load_config(DEFAULT, ["data.generator.seed=3"])
    saved = tmp_path / "saved.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved) == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_config_loads(path):
    cfg = load_config(path)
    assert cfg.teacher.model.name == cfg.student.model.name
    assert set(cfg.stages) <= set(STAGES)


@pytest.mark.slow
@pytest.mark.parametrize("head", HEAD_NAMES)
def test_each_embedded_default_head_pair_is_distillable(head):
    from distill.distiller import check_pair
    from distill.models.detector import build_detector
    from pipeline.tools.ablation_heads import head_overrides

    cfg = load_config(DEFAULT, [*head_overrides(head), "teacher.model.pretrained=none",
                                "student.model.pretrained=none"])
    assert cfg.teacher.model.name == cfg.student.model.name == head and cfg.run == f"head-{head}"
    teacher, student = (build_detector(getattr(cfg, r).model, 10, seed=0) for r in ("teacher", "student"))
    size = tuple(cfg.student.model.input_size)
    check_pair(teacher, student, list("abcdefghij"), list("abcdefghij"), size, "teacher", size)


def test_every_ablation_variant_sets_real_distill_settings():
    import dataclasses

    from distill.settings import DistillConfig
    from pipeline.tools.ablation import DEFAULT_VARIANTS, VARIANTS

    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    assert set(DEFAULT_VARIANTS) <= set(VARIANTS) and "bckd_loc_locpos" not in DEFAULT_VARIANTS
    for name, overrides in VARIANTS.items():
        assert set(overrides) <= fields, name
        DistillConfig(**overrides)


def test_exponents_without_a_dot_are_floats():
    # YAML 1.1 (PyYAML) reads `1e-4` as a string; a float field takes it as the number a user means
    cfg = load_config(DEFAULT, ["teacher.train.lr=1e-4", "distill.loc_weight=2e0"])
    assert cfg.teacher.train.lr == 1e-4 and cfg.distill.loc_weight == 2.0
    with pytest.raises(ConfigError, match="'teacher.train.lr' must be float, got 'fast'"):
        load_config(DEFAULT, ["teacher.train.lr=fast"])


@pytest.mark.parametrize("override, message", [
    ("teacher.train.batch_size=0", "'teacher.train.batch_size' must be >= 1, got 0"),
    ("student.train.lr=0", "'student.train.lr' must be > 0.0, got 0.0"),
    ("teacher.train.epochs=-1", "'teacher.train.epochs' must be >= 1, got -1"),
    ("quantize.calib_images=2", "'quantize.calib_images' must be >= 8, got 2"),
])
def test_ranges_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT, [override])


def test_the_run_name_stays_inside_runs_dir():
    with pytest.raises(ConfigError, match=r"'run' must be a folder name inside runs_dir \(runs\), got '../../etc/x'"):
        load_config(DEFAULT, ["run=../../etc/x"])


def test_a_partial_section_keeps_its_own_defaults_not_the_class_defaults():
    # qat.train's default is a short fine-tuning schedule (lr 1e-5, adamw, 1 epoch), not TrainConfig's
    # (lr 0.01, sgd, 12 epochs): overriding one of its keys keeps the others.
    cfg = load_config(DEFAULT, ["qat.train.max_train_images=480", "qat.distill.method=none"])
    assert (cfg.qat.train.lr, cfg.qat.train.optimizer, cfg.qat.train.epochs) == (1e-5, "adamw", 1)
    assert cfg.qat.train.max_train_images == 480 and cfg.qat.distill.method == "none"
    assert cfg.qat.distill.loc_weight == 4.0 and cfg.student.train.lr == 0.001  # the file's own values elsewhere


def test_the_settings_reference_is_current():
    """docs/settings.md is generated from the config dataclasses: a setting added or changed without
    regenerating it (python -m pipeline.tools.settings_doc) fails here."""
    from pipeline.tools.settings_doc import OUT, render

    assert OUT.read_text(encoding="utf-8") == render()
    assert "| `distill.kd_pos_temperature` | `float` | `2.0` |" in render()
    assert "| `report.latency_budget_ms` | `float \\| None` | `None` |" in render()
