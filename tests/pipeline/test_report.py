"""The report's rows, deltas and Pareto front from hand-written stage metrics, and the gates."""

import json

import pytest

from deploy.errors import GateError
from pipeline.config import PipelineConfig
from pipeline.gates import check_gate
from pipeline.stages.report import collect_rows, report_table
from pipeline.stages.report_plots import pareto_front


def test_pareto_front_by_hand():
    # (latency, AP): b is beaten by a (faster and as accurate); d by c; e ties nobody and is slowest-but-best.
    points = [(10.0, 0.30), (12.0, 0.30), (5.0, 0.20), (6.0, 0.19), (50.0, 0.35)]
    assert pareto_front(points) == [2, 0, 4]


def latency(p50):
    stats = {"p50": p50, "p99": 2 * p50, "throughput_ips": 1000 / p50}
    return {"infer": stats, "end_to_end": {**stats, "p50": p50 + 1}}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture(params=["one layout", "before one layout"])
def run(tmp_path, request):
    """A run folder with its stages' metrics.json in deploy/metrics_file.py's layout, or in the layouts the
    stages wrote before it (an existing run folder reads the same)."""
    before = request.param == "before one layout"
    cfg = PipelineConfig(runs_dir=str(tmp_path), stages=["teacher", "student", "distill", "export", "quantize"])
    r = cfg.run_dir
    aps = {"teacher": 0.30, "student": 0.20, "distill": 0.24}
    for stage, ap in aps.items():
        measured = {"AP": ap, "AP50": ap + 0.1, "AP75": ap, "APs": 0, "APm": 0, "APl": 0}
        write(r / stage / "metrics.json", measured if before else {"artifacts": {"pytorch": measured}})
        write(r / stage / "profile.json", {"params": 5, "gflops": 1.0, "size_mb": 2.0, "latency_ms": latency(40.0),
                                           "artifact": str(r / stage / "last.pt")})
    art = {"AP": 0.235, "AP50": 0.3, "AP75": 0.2, "latency_ms": latency(10.0), "size_mb": 12.0,
           "backend": "onnxruntime", "precision": "fp32", "artifact": str(r / "export" / "model.onnx")}
    extra = {"model": {"params": 3, "gflops": 0.5}, "parity": {"scores_max_abs": 2e-4, "boxes_max_abs": 1e-3}}
    write(r / "export" / "metrics.json", {"onnxruntime_fp32": art, **extra} if before else
          {"artifacts": {"onnxruntime_fp32": art}, "reference": {"pytorch": {"AP": 0.24}}, **extra})
    int8 = {**art, "AP": 0.22, "precision": "int8", "latency_ms": latency(5.0),
            "artifact": str(r / "quantize" / "m.onnx"), "executed_precision": "int8+fp32",
            "precision_warning": "warning: m.onnx: runs fp32"}
    write(r / "quantize" / "metrics.json", {"artifacts": {"onnxruntime_int8": int8}, "reference": {"fp32_AP": 0.235}
                                            if before else {"onnxruntime_fp32": {"AP": 0.235}}})

    return cfg


def test_rows_split_end_to_end_time_into_its_parts():
    from pipeline.stages.report import _row

    split = {**latency(5.0), "preprocess": {"p50": 0.4}, "postprocess": {"p50": 0.3}}
    row = _row("quantize", "m", {"backend": "onnxruntime"}, split, {})
    assert (row["preprocess_ms"], row["postprocess_ms"], row["e2e_over_infer"]) == (0.4, 0.3, 1.2)
    assert "| 5.00 | 10.00 | 6.00 | 10.00 | 0.40 | 0.30 | 1.20 |" in report_table(
        [{**row, "pareto": False, "previous": None, "delta_AP_previous": None, "delta_AP_teacher": None}])


def test_rows_carry_deltas_to_previous_stage_and_teacher(run):
    rows = {r["name"]: r for r in collect_rows(run)}
    assert list(rows) == ["teacher", "student", "distill", "onnxruntime_fp32", "onnxruntime_int8"]
    assert rows["distill"]["previous"] == "student" and rows["distill"]["delta_AP_previous"] == pytest.approx(0.04)
    assert rows["onnxruntime_int8"]["delta_AP_previous"] == pytest.approx(-0.015)
    assert rows["onnxruntime_int8"]["delta_AP_teacher"] == pytest.approx(-0.08)
    assert rows["onnxruntime_int8"]["params"] == 3 and rows["teacher"]["params"] == 5
    assert rows["onnxruntime_int8"]["e2e_latency_ms"]["p50"] == 6.0
    assert rows["onnxruntime_int8"]["e2e_over_infer"] == 1.2 and rows["onnxruntime_int8"]["preprocess_ms"] is None
    # Pareto: int8 (5 ms, 22.0) and fp32 (10 ms, 23.5) and the teacher (40 ms, 30.0); the PyTorch students lose.
    assert [n for n, r in rows.items() if r["pareto"]] == ["teacher", "onnxruntime_fp32", "onnxruntime_int8"]
    table = report_table(list(rows.values()))
    assert ("| quantize/onnxruntime_int8 * | onnxruntime | int8 | int8+fp32 (!) | 22.0 |" in table
            and "-1.50 (onnxruntime_fp32)" in table)


def test_gates_stop_with_stage_figure_and_limit(run):
    run.quantize.max_map_drop = 1.0
    with pytest.raises(GateError, match=r"stage quantize: onnxruntime_int8 loses 1.50 AP .* max 1.0"):
        check_gate("quantize", run)
    run.quantize.max_map_drop = 2.0
    assert check_gate("quantize", run) == "onnxruntime_int8 -1.50 AP (max drop 2.0)"
    with pytest.raises(GateError, match="scores differ by 2.00e-04 > max 1e-04"):
        check_gate("export", run)
    assert check_gate("distill", run) == "AP 24.00 >= baseline 20.00 + 0.0"
    run.distill.min_gain_over_baseline = 5.0
    with pytest.raises(GateError, match=r"stage distill: AP 24.00 is below .* 20.00 \+ 5.0"):
        check_gate("distill", run)
    run.stages.remove("student")  # no baseline in the run: no gate
    assert check_gate("distill", run) is None


def test_the_qat_gate_holds_both_runtimes_to_qat_max_map_drop(run):
    r = run.run_dir
    art = {"AP": 0.235, "AP50": 0.3, "AP75": 0.2, "latency_ms": latency(5.0), "size_mb": 3.0, "precision": "int8"}
    write(r / "qat" / "metrics.json", {"artifacts": {"qat_onnxruntime": {**art, "AP": 0.232, "backend": "onnxruntime"},
                                                      "qat_openvino": {**art, "AP": 0.226, "backend": "openvino"}},
                                       "reference": {"onnxruntime_fp32": {"AP": 0.235}}})
    run.qat.max_map_drop = 0.5
    with pytest.raises(GateError, match=r"stage qat: qat_openvino loses 0.90 AP .* max 0.5 \(qat.max_map_drop\)"):
        check_gate("qat", run)
    run.qat.max_map_drop = 1.0
    assert check_gate("qat", run) == "qat_onnxruntime -0.30 AP, qat_openvino -0.90 AP (max drop 1.0)"


def test_the_html_report_carries_what_the_markdown_one_does(run):
    from pipeline.stages.report import write_report

    write(run.run_dir / "distill" / "stage.json", {"state": "done", "wall_s": 123.4})
    write_report(run, run.run_dir / "report", progress=False)
    md, page = (run.run_dir / "report.md").read_text(), (run.run_dir / "report.html").read_text()
    assert "Stage wall times: distill 123.4 s." in md and "Stage wall times: distill 123.4 s." in page
    for words in ("executed: the precision the runtime reports", "(!): not what was asked", "marks the Pareto front"):
        assert words in md.replace("`", "") and words in page


def test_the_bar_plot_legend_covers_no_bar(monkeypatch, tmp_path):
    import pipeline.stages.report_plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [{"name": n, "stage": s, "AP": ap} for n, s, ap in
            (("teacher", "teacher", 0.30), ("distill", "distill", 0.24), ("openvino_int8", "quantize", 0.29))]
    plots.plot_ap_bars(rows, tmp_path / "bars.png")
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    for bar in ax.patches:
        assert not legend.overlaps(bar.get_window_extent())


def artifact_row(stage, name, ap, e2e):
    return {"stage": stage, "name": name, "id": f"{stage}/{name}", "AP": ap, "e2e_latency_ms": {"p50": e2e}}


def test_the_deployed_artifact_is_the_fastest_that_passes_its_gate_or_the_best_within_a_budget():
    from pipeline.stages.report import deployed_artifact

    cfg = PipelineConfig()  # quantize.max_map_drop 1.0, qat.max_map_drop 0.5 (AP points)
    rows = [artifact_row("distill", "distill", 0.240, 20.0),  # a checkpoint, never deployed
            artifact_row("export", "onnxruntime_fp32", 0.235, 9.0),
            artifact_row("quantize", "onnxruntime_int8", 0.220, 3.0),  # 1.5 points down: fails its gate
            artifact_row("quantize", "openvino_int8", 0.230, 4.0),  # 0.5 down: passes
            artifact_row("qat", "qat_openvino", 0.229, 3.5),  # 0.6 down: fails qat's 0.5
            artifact_row("export", "onnxruntime_fp32_nms", 0.235, 8.0),
            artifact_row("quantize", "openvino_int8_uint8_nms", 0.2345, 4.2)]
    chosen = deployed_artifact(rows, cfg)
    assert chosen["row"]["id"] == "quantize/openvino_int8" and "fastest" in chosen["why"]
    cfg.report.latency_budget_ms = 5.0  # the most accurate within 5 ms: the uint8 NMS IR (23.45 at 4.2 ms)
    assert deployed_artifact(rows, cfg)["row"]["id"] == "quantize/openvino_int8_uint8_nms"
    cfg.report.latency_budget_ms = 8.5
    assert deployed_artifact(rows, cfg)["row"]["id"] == "export/onnxruntime_fp32_nms"  # 23.5 ties fp32, faster
    cfg.report.latency_budget_ms = 1.0
    chosen = deployed_artifact(rows, cfg)
    assert chosen["row"]["id"] == "quantize/openvino_int8" and "no artifact runs within" in chosen["why"]
    assert deployed_artifact(rows[:1], cfg) is None


def test_the_report_names_the_deployed_artifact_and_how_to_run_it(run):
    from pipeline.stages.report import write_report

    report = write_report(run, run.run_dir / "report", progress=False)
    assert report["deployed"]["id"] == "export/onnxruntime_fp32"  # the int8 file is 1.5 points down: over the gate
    md = (run.run_dir / "report.md").read_text()
    artifact = report["deployed"]["artifact"]
    assert f"python3 deploy/benchmark.py {artifact} --data" in md
    assert f'boxes, scores, labels = open_detector("{artifact}")(image)' in md
    assert "from deploy.detector import open_detector" in (run.run_dir / "report.html").read_text()


def test_a_gate_on_a_cut_or_missing_metrics_file_is_one_line(run):
    """A KeyError escaped the error handling when a stage's metrics.json lacked what its gate reads."""
    from deploy.errors import InputError

    (run.run_dir / "export" / "metrics.json").write_text("{")
    with pytest.raises(InputError, match=r"export/metrics.json: missing or unreadable; its gate cannot be checked"):
        check_gate("export", run)
    (run.run_dir / "export" / "metrics.json").write_text("{}")
    with pytest.raises(InputError, match=r"export/metrics.json: has no 'parity'; its gate cannot be checked"):
        check_gate("export", run)
    (run.run_dir / "quantize" / "metrics.json").write_text('{"artifacts": {}}')
    with pytest.raises(InputError, match=r"quantize/metrics.json: has no 'reference.onnxruntime_fp32'"):
        check_gate("quantize", run)
    (run.run_dir / "quantize" / "metrics.json").write_text('{"reference": {"onnxruntime_fp32": {"AP": 0.2}}}')
    with pytest.raises(InputError, match=r"quantize/metrics.json: lists no artifact; its gate cannot be checked"):
        check_gate("quantize", run)
    (run.run_dir / "distill" / "metrics.json").unlink()
    with pytest.raises(InputError, match=r"distill/metrics.json: missing or unreadable"):
        check_gate("distill", run)
