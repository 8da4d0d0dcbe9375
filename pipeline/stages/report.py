"""The report stage: one table across every stage's artifacts, with what each stage cost in accuracy and
bought in speed, plots, the machine and the library versions.

Writes <run>/report.md, report.json and report.html (plots embedded), and the PNGs in <run>/report/.
AP figures in report.json are COCO fractions (0.284), as in every metrics.json; the tables show percent.
Latencies come from the benchmark stage (every artifact timed side by side in one process) when it
ran, else from the stage that made the artifact; PyTorch rows from the training stages' profiles.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from deploy import metrics_file
from deploy.benchmark import join_artifact
from deploy.errors import InputError
from deploy.files import write_json, write_text
from deploy.machine import machine_info, machine_line
from deploy.tables import markdown_table
from pipeline import paths
from pipeline.artifacts import qualified_name, stage_metrics
from pipeline.config import PipelineConfig
from pipeline.stage_state import read_state, versions
from pipeline.stages.report_plots import pareto_front, plot_ap_bars, plot_ap_latency, plot_training

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Which row each artifact is compared with as "the previous stage".
PREVIOUS = {"onnxruntime_fp32": "distill", "onnxruntime_int8": "onnxruntime_fp32",
            "onnxruntime_int8_cpu": "onnxruntime_fp32", "openvino_fp32": "onnxruntime_fp32",
            "openvino_bf16": "openvino_fp32", "openvino_fp16": "openvino_fp32", "openvino_int8": "openvino_fp32",
            "tensorrt_fp32": "onnxruntime_fp32", "tensorrt_fp16": "onnxruntime_fp32",
            "tensorrt_int8": "onnxruntime_int8_trt", "onnxruntime_int8_trt": "onnxruntime_fp32",
            "onnxruntime_fp32_uint8": "onnxruntime_fp32", "onnxruntime_fp32_nms": "onnxruntime_fp32",
            "openvino_int8_uint8": "openvino_int8", "openvino_int8_nms": "openvino_int8",
            "openvino_int8_uint8_nms": "openvino_int8", "qat_onnxruntime": "onnxruntime_fp32",
            "qat_openvino": "onnxruntime_fp32"}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _row(stage: str, name: str, metrics: dict[str, Any], latency: dict[str, Any] | None,
         model: dict[str, Any]) -> dict[str, Any]:
    infer, e2e = (latency or {}).get("infer"), (latency or {}).get("end_to_end")
    pre, post = (latency or {}).get("preprocess"), (latency or {}).get("postprocess")
    return {
        "stage": stage, "name": name, "id": f"{stage}/pytorch" if stage == name else qualified_name(stage, name),
        "artifact": metrics.get("artifact"), "runtime": metrics.get("backend", "pytorch"),
        "precision": metrics.get("precision", "fp32"),
        "executed_precision": metrics.get("executed_precision", "fp32" if "backend" not in metrics else None),
        "precision_warning": metrics.get("precision_warning"), **{k: metrics.get(k) for k in METRICS},
        "latency_ms": {"p50": infer["p50"], "p99": infer["p99"]} if infer else None,
        "e2e_latency_ms": {"p50": e2e["p50"], "p99": e2e["p99"]} if e2e else None,
        # where end-to-end time goes besides the model (older runs did not time the parts alone)
        "preprocess_ms": pre["p50"] if pre else None, "postprocess_ms": post["p50"] if post else None,
        "e2e_over_infer": round(e2e["p50"] / infer["p50"], 3) if infer and e2e else None,
        "throughput_ips": infer["throughput_ips"] if infer else None,
        "size_mb": metrics.get("size_mb"), "params": model.get("params"), "gflops": model.get("gflops"),
    }


def collect_rows(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """A row per artifact the run holds, in stage order, with deltas to the previous stage and the teacher."""
    rows: list[dict[str, Any]] = []
    for stage in ("teacher", "student", "distill"):
        metrics = metrics_file.measurement(stage_metrics(cfg, stage))
        profile = _read(paths.stage_dir(cfg, stage) / "profile.json")
        if "AP" in metrics and stage in cfg.stages:
            rows.append(_row(stage, stage,
                             {**profile, **metrics,
                              "artifact": profile.get("artifact", str(paths.stage_dir(cfg, stage) / "last.pt"))},
                             profile.get("latency_ms"), profile))
    model = stage_metrics(cfg, "export").get("model", {})
    artifacts = {}
    for stage in ("export", "quantize", "qat"):
        for name, m in stage_metrics(cfg, stage).get("artifacts", {}).items():
            artifacts[name] = (stage, m)
    for precision in ("fp32", "fp16", "int8"):
        engine = metrics_file.read(paths.engines_dir(cfg) / f"metrics_{precision}.json").get("artifacts", {})
        # an engine's file holds it alone (an older one is named from its build metadata, possibly "unknown")
        m = engine.get(f"tensorrt_{precision}") or (next(iter(engine.values())) if len(engine) == 1 else {})
        if m:
            artifacts[f"tensorrt_{precision}"] = ("engines", m)
    # The benchmark's entries by their stage-qualified name; an older benchmark.json by file, one file
    # possibly being several artifacts (the FP32 IR compiled for f32 and for bf16): keyed by both.
    entries = [e for e in _read(paths.benchmark_json(cfg)).get("results", []) if not e.get("round")]
    by_id = {e["name"]: e["latency_ms"] for e in entries if "name" in e}
    by_file = {join_artifact(Path(e["artifact"]).resolve(), e.get("inference_precision")): e["latency_ms"]
               for e in entries}
    for name, (stage, m) in artifacts.items():
        latency = by_id.get(qualified_name(stage, name)) if by_id else \
            by_file.get(join_artifact(Path(m["artifact"]).resolve(), m.get("inference_precision")))
        rows.append(_row(stage, name, m, latency or m.get("latency_ms"), model))
    by_name = {r["name"]: r for r in rows}
    teacher = by_name.get("teacher")
    for r in rows:
        previous = {"student": "teacher", "distill": "student" if "student" in by_name else "teacher"}.get(
            r["name"], PREVIOUS.get(r["name"]))
        r["previous"] = previous if previous in by_name else None
        r["delta_AP_previous"] = r["AP"] - by_name[previous]["AP"] if r["previous"] else None
        r["delta_AP_teacher"] = r["AP"] - teacher["AP"] if teacher and r is not teacher else None
    timed_rows = [r for r in rows if r["latency_ms"]]
    front = pareto_front([(r["latency_ms"]["p50"], r["AP"]) for r in timed_rows])
    for r in rows:
        r["pareto"] = any(r is timed_rows[i] for i in front)
    return rows


def _fmt(value: Any, spec: str, scale: float = 1.0, sign: bool = False) -> str:
    if value is None:
        return "-"
    return format(scale * value, ("+" if sign else "") + spec)


def table_cells(r: dict[str, Any]) -> list[str]:
    lat, e2e = r["latency_ms"] or {}, r["e2e_latency_ms"] or {}
    executed = (r.get("executed_precision") or "-") + (" (!)" if r.get("precision_warning") else "")
    return [r["id"] + (" *" if r["pareto"] else ""), r["runtime"], r["precision"], executed,
            *(_fmt(r[k], ".1f", 100) for k in ("AP", "AP50", "AP75", "APs")),
            _fmt(r["delta_AP_previous"], ".2f", 100, True) + (f" ({r['previous']})" if r["previous"] else ""),
            _fmt(r["delta_AP_teacher"], ".2f", 100, True),
            _fmt(lat.get("p50"), ".2f"), _fmt(lat.get("p99"), ".2f"), _fmt(e2e.get("p50"), ".2f"),
            _fmt(e2e.get("p99"), ".2f"), _fmt(r.get("preprocess_ms"), ".2f"), _fmt(r.get("postprocess_ms"), ".2f"),
            _fmt(r.get("e2e_over_infer"), ".2f"), _fmt(r["throughput_ips"], ".1f"), _fmt(r["size_mb"], ".2f"),
            _fmt(r["params"], ".2f", 1e-6), _fmt(r["gflops"], ".2f")]


HEADER = ["artifact", "runtime", "precision", "executed", "AP", "AP50", "AP75", "APs", "ΔAP vs previous",
          "ΔAP vs teacher", "infer p50 ms", "infer p99 ms", "e2e p50 ms", "e2e p99 ms", "pre p50 ms", "post p50 ms",
          "e2e/infer", "images/s", "size MB", "params M", "GFLOPs"]


def passes_gates(row: dict[str, Any], float_ap: float | None, cfg: PipelineConfig) -> bool:
    """Whether an artifact's AP is within its stage's gate of the FP32 ONNX's (export's files passed theirs
    when the stage wrote them; an artifact whose AP was not measured here cannot be said to pass)."""
    if row["stage"] == "export":
        return True
    if row.get("AP") is None or float_ap is None:
        return False
    limit = cfg.qat.max_map_drop if row["stage"] == "qat" else cfg.quantize.max_map_drop
    return 100 * (float_ap - row["AP"]) <= limit + 1e-9


def deployed_artifact(rows: list[dict[str, Any]], cfg: PipelineConfig) -> dict[str, Any] | None:
    """The artifact to ship: among the deployable files (not PyTorch checkpoints) timed end to end whose AP
    passes the gates, the fastest end to end; with report.latency_budget_ms, the most accurate within it
    (ties: the faster). None when nothing qualifies; {"row", "why"} otherwise."""
    float_ap = next((r["AP"] for r in rows if r["name"] == "onnxruntime_fp32"), None)
    timed = [r for r in rows if r["stage"] not in ("teacher", "student", "distill") and r.get("e2e_latency_ms")
             and passes_gates(r, float_ap, cfg)]
    if not timed:
        return None
    budget = cfg.report.latency_budget_ms
    fastest = min(timed, key=lambda r: r["e2e_latency_ms"]["p50"])
    if budget is None:
        return {"row": fastest, "why": "the fastest end to end of the artifacts whose AP passes the gates"}
    within = [r for r in timed if r["e2e_latency_ms"]["p50"] <= budget]
    if not within:
        return {"row": fastest, "why": f"no artifact runs within report.latency_budget_ms ({budget:g} ms end to end "
                                       "here); this is the fastest whose AP passes the gates"}
    best = max(within, key=lambda r: (r["AP"], -r["e2e_latency_ms"]["p50"]))
    return {"row": best, "why": f"the most accurate within report.latency_budget_ms ({budget:g} ms end to end), "
                                "of the artifacts whose AP passes the gates"}


def deployment_lines(chosen: dict[str, Any] | None, cfg: PipelineConfig) -> list[str]:
    """The report's section on the deployed artifact (markdown), with how to time and use it."""
    if chosen is None:
        return ["## Deployed artifact", "", "None: no artifact was timed end to end with its AP within the gates "
                "(run the benchmark stage).", ""]
    r = chosen["row"]
    data = Path(cfg.data.root) / cfg.data.val_annotations
    return ["## Deployed artifact", "",
            f"**{r['id']}**: `{r['artifact']}` ({chosen['why']}): AP {100 * r['AP']:.1f}, end to end "
            f"{r['e2e_latency_ms']['p50']:.2f} ms p50 (infer {r['latency_ms']['p50']:.2f} ms, e2e/infer "
            f"{r['e2e_over_infer']:.2f}), {r['size_mb']:.1f} MB.", "",
            "Time it on your device (copy `deploy/`, the file, and a few images with their annotations):", "",
            "```bash", f"python3 deploy/benchmark.py {r['artifact']} --data {data} --latency-only", "```", "",
            "Use it in an application (`deploy/` needs no torch):", "",
            "```python", "from deploy.detector import open_detector",
            f"boxes, scores, labels = open_detector(\"{r['artifact']}\")(image)"
            "  # image: HWC uint8 RGB; boxes xyxy pixels",
            "```", ""]


def report_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(HEADER, [table_cells(r) for r in rows])


def stage_times(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    out = {}
    for stage in cfg.stages:
        state = read_state(cfg.run_dir / stage)
        if state:
            out[stage] = {k: state.get(k) for k in ("state", "wall_s", "finished", "gate")}
    return out


def notes(cfg: PipelineConfig) -> list[str]:
    """What the run could not build or time here, and why."""
    out = []
    engines = _read(paths.engines_dir(cfg) / "engines.json")
    if isinstance(engines.get("skipped"), str):
        out.append(f"TensorRT engines not built on this machine: {engines['skipped']}.")
    for skipped in _read(paths.benchmark_json(cfg)).get("skipped", []):
        out.append(f"Not timed here: {skipped['artifact']} ({skipped['reason']}).")
    quantized = stage_metrics(cfg, "quantize")
    for name, why in quantized.get("skipped", {}).items():
        out.append(f"Not built here: {name} ({why}).")
    for name, m in quantized.get("artifacts", {}).items():
        if m.get("precision_warning"):
            out.append(f"{name}: {m['precision_warning'].removeprefix('warning: ')}.")
    return out


def run_stage(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """The report stage: write the report; its result is the row count."""
    return {"rows": len(write_report(cfg, out_dir, progress)["rows"])}


def write_report(cfg: PipelineConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Collect the rows, draw the plots, write report.{md,json,html}; return report.json's content."""
    run = cfg.run_dir
    rows = collect_rows(cfg)
    if not rows:
        raise InputError(f"{run}: no stage has written metrics yet; nothing to report (run the pipeline first)")
    logs = {stage: run / stage / "log.jsonl" for stage in ("teacher", "student", "distill") if stage in cfg.stages}
    plots = {"ap_vs_latency": plot_ap_latency(rows, out_dir / "ap_vs_latency.png"),
             "ap_by_stage": plot_ap_bars(rows, out_dir / "ap_by_stage.png"),
             "training": plot_training(logs, out_dir / "training_curves.png")}
    plots = {k: v for k, v in plots.items() if v is not None}
    chosen = deployed_artifact(rows, cfg)
    report = {"run": cfg.run, "rows": rows, "deployed": {"id": chosen["row"]["id"],
                                                         "artifact": chosen["row"]["artifact"],
                                                         "why": chosen["why"]} if chosen else None,
              "deployment": deployment_lines(chosen, cfg), "stages": stage_times(cfg), "notes": notes(cfg),
              "machine": machine_info(), "versions": versions(),
              "plots": {k: str(v) for k, v in plots.items()},
              "units": {"AP": "COCO mAP@[.5:.95] as a fraction", "latency_ms": "infer-only, ms per batch of 1",
                        "e2e_latency_ms": "preprocess + infer + NMS, ms", "size_mb": "file (PyTorch: fp32 weights)",
                        "gflops": "forward FLOPs at batch 1, 1e9 (multiply-add = 2)"}}
    write_json(run / "report.json", report)
    write_text(run / "report.md", render_markdown(report, {k: v.relative_to(run) for k, v in plots.items()}))
    write_text(run / "report.html", render_html(report, plots))
    return report


def _machine_line(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "openvino", "tensorrt"))
    return f"{machine_line(m)}, {m['platform']}; Python {v['python']}, {libs}"


LEGEND = ("AP in percent on the whole val split; ΔAP in AP points; latency in ms at batch 1. "
          "`executed`: the precision the runtime reports its convolutions run in (`(!)`: not what was asked). "
          "`*` marks the Pareto front (no other artifact is both at least as fast and at least as accurate).")


def stage_times_line(report: dict[str, Any]) -> str:
    stages = " · ".join(f"{s} {t['wall_s']} s" for s, t in report["stages"].items() if t.get("wall_s") is not None)
    return f"Stage wall times: {stages}."


def render_markdown(report: dict[str, Any], plots: dict[str, Path]) -> str:
    lines = [f"# edgekd report: {report['run']}", "", f"Machine: {_machine_line(report)}.", "",
             *report["deployment"], "## Every artifact", "", LEGEND, "",
             report_table(report["rows"]), "", stage_times_line(report), ""]
    lines += [f"- {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    lines += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def deployment_html(lines: list[str]) -> str:
    """The deployed-artifact section's markdown as HTML: code fences as <pre>, the rest as paragraphs."""
    out, code = [], None
    for line in lines[1:]:
        if line.startswith("```"):
            if code is None:
                code = []
            else:
                out.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
        elif code is not None:
            code.append(line)
        elif line:
            out.append(f"<p>{html.escape(line.replace('**', '').replace('`', ''))}</p>")
    return "<h2>Deployed artifact</h2>" + "".join(out)


def render_html(report: dict[str, Any], plots: dict[str, Path]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(r)) + "</tr>"
                   for r in report["rows"])
    images = "".join(f'<figure><img alt="{name}" '
                     f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
                     f"<figcaption>{name}</figcaption></figure>" for name, path in plots.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edgekd report: "
            f"{html.escape(report['run'])}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%}</style></head><body>"
            f"<h1>edgekd report: {html.escape(report['run'])}</h1><p>Machine: {html.escape(_machine_line(report))}.</p>"
            f"{deployment_html(report['deployment'])}<h2>Every artifact</h2>"
            f"<p>{html.escape(LEGEND).replace('`', '')}</p>"
            f"<table><tr>{head}</tr>{body}</table><p>{html.escape(stage_times_line(report))}</p>"
            + "".join(f"<p>{html.escape(n)}</p>" for n in report["notes"]) + f"{images}</body></html>\n")
