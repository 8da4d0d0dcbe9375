"""The ablation over several seeds: the summary by hand, and a tiny two-seed run's layout and figures."""

import json

import pytest
import torch

from deploy.errors import InputError
from pipeline.config import PipelineConfig, load_config
from pipeline.tools.ablation import VARIANTS, run_seeds, seeds_table, summarise, training_time
from tests.conftest import REPO

DEFAULT = REPO / "configs" / "pipelines" / "default.yaml"


SMALL = {"input_size": "[128,128]", "fpn_channels": 16, "head_channels": 16, "head_convs": 1,
         "backbone": "efficientnet_lite0"}


def tiny_config(tiny_scenes, *extra):
    """The default pipeline shrunk to conftest's tiny teacher: same small model, 2 steps."""
    return load_config(DEFAULT, [f"data.root={tiny_scenes}", "data.generator.size=tiny",
                                 *(f"student.model.{k}={v}" for k, v in SMALL.items()),
                                 "student.train.max_steps=2", "student.train.batch_size=4", "student.train.workers=0",
                                 "student.train.max_train_images=0", "student.train.max_val_images=0", *extra])


def metrics(ap, ap50=0.5, ap75=0.3):
    return {"AP": ap, "AP50": ap50, "AP75": ap75}


def test_summarise_pairs_each_seed_with_its_own_baseline():
    per_seed = {
        0: {"none": metrics(0.20, 0.30), "bckd": metrics(0.23, 0.34)},
        1: {"none": metrics(0.22, 0.32), "bckd": metrics(0.22, 0.36)},
        2: {"none": metrics(0.21, 0.40), "bckd": metrics(0.25, 0.38), "kd": metrics(0.24)},
        3: {"kd": metrics(0.30)},  # no `none` at this seed: its AP counts in the mean, not in the gain
    }
    s = summarise(per_seed)
    assert list(s) == ["none", "bckd", "kd"]
    assert s["none"]["AP"] == pytest.approx(0.21) and s["none"]["AP_sd"] == pytest.approx(0.01)
    assert s["none"]["AP50"] == pytest.approx(0.34) and "gain" not in s["none"]
    b = s["bckd"]
    assert b["seeds"] == [0, 1, 2] and b["AP_per_seed"] == [0.23, 0.22, 0.25]
    assert b["AP"] == pytest.approx(0.70 / 3) and b["AP_sd"] == pytest.approx((42 / 9 * 1e-4 / 2) ** 0.5)
    # paired gains: +0.03, 0.00, +0.04
    assert (b["gain"] == pytest.approx(0.07 / 3) and b["gain_min"] == pytest.approx(0.0)
            and b["gain_max"] == pytest.approx(0.04))
    k = s["kd"]
    assert (k["seeds"] == [2, 3] and k["AP"] == pytest.approx(0.27) and k["gain_seeds"] == 1
            and k["gain"] == pytest.approx(0.03))

    single = summarise({0: {"none": metrics(0.2), "bckd": metrics(0.25)}})
    assert single["bckd"]["AP_sd"] is None and single["bckd"]["gain"] == pytest.approx(0.05)

    table = seeds_table(s, {"AP": 0.31, "AP50": 0.45, "AP75": 0.33}).splitlines()
    assert table[2] == "| teacher | | 31.0 | | | 45.0 | 33.0 | | |"
    assert table[3].startswith("| student none | 3 | 21.00 | 1.00 | 20.0, 22.0, 21.0 | 34.0 |")
    # gap closed = mean paired gain / (teacher - mean none) = 2.33 / 10.0
    assert table[4] == "| student bckd | 3 | 23.33 | 1.53 | 23.0, 22.0, 25.0 | 36.0 | 30.0 | +2.33 [+0.0, +4.0] | 23% |"


@pytest.mark.slow
def test_two_seed_ablation_writes_each_seed_apart_and_a_paired_summary(tiny_scenes, tiny_model, tmp_path):
    _, _, teacher = tiny_model
    cfg = tiny_config(tiny_scenes)
    out = tmp_path / "ablation"
    per_seed, _ = run_seeds(cfg, teacher, ["none", "bckd"], out, [0, 5])

    for d in (out, out / "seed5"):
        for name in ("none", "bckd"):
            assert (d / name / "metrics.json").is_file() and (d / name / "last.pt").is_file()
        assert (d / "ablation.md").is_file()
    weights = {(seed, name): torch.load(d / name / "last.pt", weights_only=True)["model"]["head.cls_out.weight"]
               for seed, d in ((0, out), (5, out / "seed5")) for name in ("none", "bckd")}
    assert not torch.equal(weights[0, "none"], weights[5, "none"])  # the seed reached the student's initialisation
    assert not torch.equal(weights[5, "none"], weights[5, "bckd"])

    summary = json.loads((out / "ablation-seeds.json").read_text())
    assert summary["seeds"] == [0, 5]
    for seed, d in ((0, out), (5, out / "seed5")):
        for name in ("none", "bckd"):
            assert (summary["per_seed"][str(seed)][name]["AP"]
                    == json.loads((d / name / "metrics.json").read_text())["artifacts"]["pytorch"]["AP"])
    gains = [per_seed[s]["bckd"]["AP"] - per_seed[s]["none"]["AP"] for s in (0, 5)]
    assert summary["variants"]["bckd"]["gain"] == pytest.approx(sum(gains) / 2)
    assert "| student bckd | 2 |" in (out / "ablation-seeds.md").read_text()

    # A seed finds its own folder whatever --seeds lists; finished runs are reused, not trained again.
    stamp = (out / "seed5" / "bckd" / "last.pt").stat().st_mtime_ns
    again, _ = run_seeds(cfg, teacher, ["bckd"], out, [5])
    assert again[5]["bckd"]["AP"] == per_seed[5]["bckd"]["AP"]
    assert (out / "seed5" / "bckd" / "last.pt").stat().st_mtime_ns == stamp

    # A finished run of other settings is refused, not reported as this configuration's, and before
    # anything trains: seed 7 has no runs yet, and none is written for it.
    changed = tiny_config(tiny_scenes, "distill.loc_weight=2.0")
    with pytest.raises(InputError, match=r"seed5/bckd/last.pt: trained with other settings "
                                         r"\(distill.loc_weight: 4.0 there, 2.0 now\)"):
        run_seeds(changed, teacher, ["none", "bckd"], out, [7, 5])
    assert not (out / "seed7").exists()
    with pytest.raises(InputError, match="repeated seed"):
        run_seeds(cfg, teacher, ["none"], out, [0, 0])


def test_the_qat_ablation_table_signs_each_change_against_fp32():
    from pipeline.tools.qat_ablation import ablation_table

    art = {"qat_onnxruntime": {"AP": 0.2323}, "qat_openvino": {"AP": 0.2256}}
    rows = {"none": {"method": "none", "steps": 60, "pytorch_fake_quant": {"AP": 0.2316}, "artifacts": art}}
    table = ablation_table(rows, 0.2290, {"onnxruntime_int8_trt": {"AP": 0.2274}})
    assert "| PTQ onnxruntime_int8_trt | - | - | - | 22.74 | -0.16 | - | - |" in table
    assert "| none | none | 60 | 23.16 | 23.23 | +0.33 | 22.56 | -0.34 |" in table


@pytest.mark.slow
def test_new_variants_train_and_report_the_selection_split(tiny_scenes, tiny_model, tmp_path):
    """kd_pos, the BCKD-family configurations and bckd+kd train from one config; each run's selection-split AP
    is its final model's on the held-out images, cached against its checkpoint."""
    _, _, teacher = tiny_model
    cfg = tiny_config(tiny_scenes, "data.select_images=8")
    out = tmp_path / "ablation"
    names = ["kd_pos", "bckd+kd"]  # BCKD's cls term on negatives: tests/distill/test_distiller.py
    per_seed, _ = run_seeds(cfg, teacher, names, out, [0])
    rows = per_seed[0]
    for name in names:
        cached = json.loads((out / name / "select_metrics.json").read_text())
        assert rows[name]["select_AP"] == cached["metrics"]["AP"] and cached["metrics"]["num_images"] == 8
        state = torch.load(out / name / "last.pt", weights_only=True)
        assert {k: state["distill"][k] for k in VARIANTS[name]} == VARIANTS[name]
    logged = json.loads((out / "bckd+kd" / "log.jsonl").read_text().splitlines()[0])
    assert {"loss_bckd_cls", "loss_bckd_loc", "loss_kd"} <= set(logged) and "loss_kd_pos" in \
        json.loads((out / "kd_pos" / "log.jsonl").read_text().splitlines()[0])
    assert "selection AP" in (out / "ablation.md").read_text()


def test_training_time_adds_the_sessions_of_a_resumed_run(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": 10, "elapsed_s": 40.0, "threads": 2}, {"step": 20, "elapsed_s": 80.0, "threads": 2},
               {"step": 20, "epoch": 1, "val": {}, "elapsed_s": 86.0, "threads": 2},
               # resumed: the session's clock restarts
               {"step": 30, "elapsed_s": 30.0, "threads": 1}, {"step": 40, "elapsed_s": 70.0, "threads": 1}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + "{cut")
    assert training_time(log) == {"train_min": round((86 + 70) / 60, 1), "threads": 1}
    assert training_time(tmp_path / "none.jsonl") == {}
    # a log from before elapsed_s was recorded: the time is unknown, not 0 minutes
    log.write_text(json.dumps({"step": 10, "loss": 1.0}) + "\n")
    assert training_time(log) == {}


@pytest.mark.slow
def test_int8_builds_and_measures_each_variants_openvino_file(tiny_scenes, tiny_model, tmp_path):
    """--int8: the export and quantize stages on the variant's checkpoint, OpenVINO INT8 alone; the row
    holds that file's AP and latency, the training's own wall time and threads; a rerun reuses it all."""
    _, _, teacher = tiny_model
    cfg = tiny_config(tiny_scenes, "export.iters=3", "export.warmup=1", "export.parity_images=2",
                      "quantize.accuracy_aware=false", "quantize.calib_images=8")
    out = tmp_path / "ablation"
    rows = run_seeds(cfg, teacher, ["none"], out, [0], int8=True)[0][0]
    quantized = json.loads((out / "none" / "deploy" / "quantize" / "metrics.json").read_text())
    # OpenVINO INT8 alone (and the FP32 IR it is made from), in the forms the config's export options ask
    # (the default: uint8 input, NMS in the graph)
    assert list(quantized["artifacts"]) == ["openvino_fp32", "openvino_int8", "openvino_int8_uint8",
                                            "openvino_int8_nms", "openvino_int8_uint8_nms"]
    m, device = quantized["artifacts"]["openvino_int8"], quantized["artifacts"]["openvino_int8_uint8_nms"]
    assert rows["none"]["device_form_e2e_p50_ms"] == device["latency_ms"]["end_to_end"]["p50"]
    assert rows["none"]["int8_AP"] == m["AP"] and rows["none"]["int8_infer_p50_ms"] == m["latency_ms"]["infer"]["p50"]
    assert rows["none"]["threads"] == torch.get_num_threads() and rows["none"]["train_min"] >= 0
    assert "OpenVINO INT8 AP" in (out / "ablation.md").read_text()
    stamp = (out / "none" / "deploy" / "quantize" / "metrics.json").stat().st_mtime_ns
    assert run_seeds(cfg, teacher, ["none"], out, [0], int8=True)[0][0]["none"]["int8_AP"] == m["AP"]
    assert (out / "none" / "deploy" / "quantize" / "metrics.json").stat().st_mtime_ns == stamp  # reused


def test_head_and_tail_rank_classes_by_training_boxes_and_average_their_ap(monkeypatch):
    import dataclasses

    import numpy as np

    from distill.data.fashion_scenes import FashionScenesConfig
    from pipeline.tools import ablation

    names = [f"c{i}" for i in range(12)]
    counts = [30, 2, 50, 7, 1, 40, 9, 3, 20, 5, 60, 4]  # by count: c10 c2 c5 c0 c8 | c6 c3 | c9 c11 c7 c1 c4
    labels = {i: np.array([c] * n) for i, (c, n) in enumerate(enumerate(counts))}
    labels[99] = np.array([4] * 100)  # a held-out image's boxes: in the file, not in the split's images
    images = [{"id": i} for i in range(len(counts))]
    fake = type("Split", (), {"class_names": names, "labels": labels, "images": images})()
    monkeypatch.setattr(ablation, "load_split", lambda data, split: fake)
    cfg = PipelineConfig()
    assert ablation.head_and_tail(cfg) is None  # no generator: balanced by assumption
    cfg.data.generator = FashionScenesConfig()
    assert ablation.head_and_tail(cfg) is None  # ratio 1: balanced
    cfg.data.generator = dataclasses.replace(cfg.data.generator, long_tail_ratio=50.0)
    head, tail = ablation.head_and_tail(cfg)
    assert head == ["c10", "c2", "c5", "c0", "c8"] and tail == ["c9", "c11", "c7", "c1", "c4"]

    row = {"per_class_AP": {n: i / 100 for i, n in enumerate(names)},
           "select_per_class_AP": {**{n: 0.5 for n in names}, "c1": None, "c4": None}}
    ablation.add_head_tail(row, (head, tail))
    assert row["head_AP"] == pytest.approx((10 + 2 + 5 + 0 + 8) / 500)
    assert row["tail_AP"] == pytest.approx((9 + 11 + 7 + 1 + 4) / 500)
    # classes with no box in the split (AP None) are left out of the mean
    assert row["select_head_AP"] == row["select_tail_AP"] == 0.5
    row = {"per_class_AP": {n: None for n in names}}
    ablation.add_head_tail(row, (head, tail))
    assert "head_AP" not in row and "tail_AP" not in row
