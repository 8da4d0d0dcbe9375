"""The teacher stage on a teacher it is given: loaded and checked once, measured, profiled."""

import json

from pipeline.config import load_config
from tests.conftest import REPO


def test_a_given_teacher_is_loaded_once_measured_and_profiled(tmp_path, tiny_model, tiny_scenes, monkeypatch):
    import distill.teachers
    import pipeline.stages.profile
    from pipeline.stages.train import run_teacher_stage

    detector, classes, path = tiny_model
    loads, reads = [], []
    real, read = distill.teachers.load_teacher, distill.teachers.load_detector
    monkeypatch.setattr(distill.teachers, "load_teacher", lambda *a, **k: loads.append(a[2:]) or real(*a, **k))
    for module in (distill.teachers, pipeline.stages.profile):  # every place that reads a checkpoint file
        monkeypatch.setattr(module, "load_detector", lambda p, *a, **k: reads.append(str(p)) or read(p, *a, **k))
    model = [f"teacher.model.{k}={json.dumps(v)}" for k, v in detector.cfg.__dict__.items()]
    cfg = load_config(REPO / "configs/pipelines/default.yaml",
                      [f"runs_dir={tmp_path}", f"data.root={tiny_scenes}", "data.generator.size=tiny",
                       f"teacher.checkpoint={path}", "teacher.checkpoint_sha256=null", "benchmark.warmup=1",
                       "benchmark.iters=2", *model])
    out = cfg.run_dir / "teacher"
    metrics = run_teacher_stage(cfg, out, progress=False)
    assert loads == [()] and reads == [str(path)]  # once, the configured file; the profile reuses the model
    assert json.loads((out / "metrics.json").read_text())["artifacts"]["pytorch"]["AP"] == metrics["AP"]
    profile = json.loads((out / "profile.json").read_text())
    assert profile["artifact"] == str(path)
    assert profile["params"] == sum(p.numel() for p in detector.parameters())
    assert not (out / "last.pt").exists()  # nothing trained
