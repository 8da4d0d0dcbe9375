"""Distillation ablation (a benchmark, not a test): the student trained with no distillation, softmax
KD, LD, BCKD, and BCKD's classification or localization term alone, with the same seed, data and
schedule, against one teacher.

    python -m pipeline.tools.ablation --config configs/pipelines/default.yaml [--variants none,bckd] \\
        [--seeds 0,1,2] [key=value ...]

Writes runs/ablation/<variant>/ (each a distill stage folder), and runs/ablation/ablation.md and
ablation.json: AP, AP50, AP75, APs/m/l per variant and the share of the teacher-student gap closed,
(AP_variant - AP_none) / (AP_teacher - AP_none). Finished variants are reused on a rerun.

A finished variant is reused only if its checkpoint was trained with the same teacher and settings;
otherwise the ablation stops and names the setting, rather than report a run of another configuration.

With several seeds (student.train.seed: the head's initialisation, the data order, the augmentation),
the config's own seed's runs stay in runs/ablation/ and every other seed's go to runs/ablation/seed<k>/, each
with its own table; runs/ablation/ablation-seeds.{md,json} give per variant the mean and standard
deviation of AP over seeds, and the gain over `none` paired seed by seed (same initialisation and
data order), which is what a one-seed difference cannot tell from noise.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from deploy import metrics_file
from deploy.errors import GateError, InputError
from deploy.evaluate import coco_eval
from deploy.files import read_jsonl, sha256_file, write_json, write_text
from deploy.tables import markdown_table
from pipeline import paths
from pipeline.artifacts import stage_metrics
from pipeline.cli import guarded
from pipeline.config import PipelineConfig, load_config
from pipeline.run_lock import run_lock
from pipeline.stages.data import load_split

# The model and training code (torch) is imported by the functions that train or evaluate, so that
# `edgekd ablation --help` loads none of it.

VARIANTS = {  # name -> distill overrides
    "none": {"method": "none"},
    "kd": {"method": "kd"},
    "ld": {"method": "ld"},
    "bckd": {"method": "bckd", "terms": ["cls", "loc"]},
    "bckd_cls": {"method": "bckd", "terms": ["cls"]},
    "bckd_loc": {"method": "bckd", "terms": ["loc"]},
    # diagnostics, not in the default list: BCKD with its IoU term only at positive locations
    "bckd_locpos": {"method": "bckd", "terms": ["cls", "loc"], "loc_positives_only": True},
    "bckd_loc_locpos": {"method": "bckd", "terms": ["loc"], "loc_positives_only": True},
    # diagnostics of the IoU term: is its harm gradient interference in the shared FPN, and does
    # distillation help early and hurt late?
    "bckd_loc_detached": {"method": "bckd", "terms": ["cls", "loc"], "loc_detached_features": True},
    "bckd_until1": {"method": "bckd", "terms": ["cls", "loc"], "until_epoch": 1},
    "bckd_until2": {"method": "bckd", "terms": ["cls", "loc"], "until_epoch": 2},
    # The literature's KD (softmax KD at positive locations, T = 2, weight 10: HikariTJU/LD) and the
    # BCKD-family configurations chosen among on the selection split (docs/distillation.md)
    "kd_pos": {"method": "kd_pos"},
    "bckd_cls_w3": {"method": "bckd", "terms": ["cls"], "cls_weight": 3.0},
    "bckd_cls_w10": {"method": "bckd", "terms": ["cls"], "cls_weight": 10.0},
    "bckd_cls_beta0": {"method": "bckd", "terms": ["cls"], "beta": 0.0},
    "bckd_cls_neg": {"method": "bckd", "terms": ["cls"], "cls_region": "negatives"},
    "bckd+kd": {"method": "bckd", "terms": ["cls", "loc", "kd"]},
    "bckd_cls+kd": {"method": "bckd", "terms": ["cls", "kd"]},
    # the best of the BCKD family on the selection split at seed 0 (bckd+kd: 32.36 there, against
    # bckd_cls_beta0's 27.35, the next), which the long-tailed and plateau studies carry on
    "bckd_best": {"method": "bckd", "terms": ["cls", "loc", "kd"]},
}
DEFAULT_VARIANTS = ("none", "kd", "ld", "bckd", "bckd_cls", "bckd_loc")
COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def teacher_metrics(cfg: PipelineConfig, path: Path) -> dict[str, Any]:
    """The teacher's val metrics: its stage's metrics.json when beside it, else evaluated now."""
    beside = metrics_file.measurement(metrics_file.read(path.parent / metrics_file.NAME))
    if beside:
        return beside
    from distill.teachers import load_teacher
    from distill.validate import predict

    val = load_split(cfg.data, "val")
    teacher, _ = load_teacher(cfg, val.class_names, path)
    return coco_eval(val, predict(teacher, val, tuple(cfg.student.model.input_size)))


def selection_metrics(cfg: PipelineConfig, checkpoint: Path) -> dict[str, Any] | None:
    """AP of a finished run's final model on the selection split (None without one), cached beside the
    checkpoint under its SHA-256 so that a rerun reuses it and a retrained run does not."""
    if not cfg.data.select_images:
        return None
    cache, digest = checkpoint.parent / "select_metrics.json", sha256_file(checkpoint)
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("checkpoint_sha256") == digest and stored.get("select_images") == cfg.data.select_images:
            return stored["metrics"]
    from distill.models.detector import load_detector
    from distill.validate import predict

    model, _, _ = load_detector(checkpoint)  # a student's checkpoint, not a teacher
    select = load_split(cfg.data, "select")
    metrics = coco_eval(select, predict(model, select, tuple(cfg.student.model.input_size)))
    metrics.pop("summary", None)
    write_json(cache, {"checkpoint_sha256": digest, "select_images": cfg.data.select_images, "metrics": metrics})
    return metrics


def training_time(log: Path) -> dict[str, Any]:
    """{"train_min", "threads"}: a variant's training wall time over every session that trained it (elapsed_s
    restarts at a resume; time after the last checkpoint of a cut session was lost with it) and the threads
    it trained with, from its log.jsonl; each key only where the log records it (a log written before
    elapsed_s existed has no time: unknown, not 0). A reused run's figures are its own, not this call's."""
    try:
        records = read_jsonl(log)
    except OSError:
        return {}
    total = last = 0.0
    timed = False
    threads = None
    for record in records:
        if "elapsed_s" in record:
            timed = True
            if record["elapsed_s"] < last:  # a new session
                total += last
            last = record["elapsed_s"]
        threads = record.get("threads", threads)
    found: dict[str, Any] = {"train_min": round((total + last) / 60, 1)} if timed else {}
    return {**found, "threads": threads} if threads is not None else found


def int8_deployment(variant: PipelineConfig, run: Path) -> dict[str, Any]:
    """What a user ships from a finished variant: the export and quantize stages on its checkpoint, OpenVINO
    INT8 alone, in <run>/deploy/ (up-to-date stages are skipped on a rerun); the INT8 file's val AP and its
    latency (batch 1, export.iters calls, export.threads). A gate that fails is reported, not fatal: the
    figures are written before the gate is checked."""
    from pipeline.run import run_pipeline

    deploy = copy.deepcopy(variant)
    deploy.runs_dir, deploy.run = str(run), "deploy"
    deploy.export.checkpoint = str(run / "last.pt")
    deploy.quantize.artifacts = ["openvino_int8"]
    deploy.stages = ["data", "export", "quantize"]
    try:
        run_pipeline(deploy, deploy.stages, progress=False)
    except GateError as exc:
        print(f"[ablation] {run.name}: {exc}", flush=True)
    built = stage_metrics(deploy, "quantize").get("artifacts", {})
    if "openvino_int8" not in built:
        raise InputError(f"{run / 'deploy' / 'quantize'}: no OpenVINO INT8 measurement written")
    m, device = built["openvino_int8"], built.get("openvino_int8_uint8_nms", {})  # the latter: export's options

    def p50(measured: dict[str, Any], kind: str) -> float | None:
        return measured.get("latency_ms", {}).get(kind, {}).get("p50")

    return {"int8_AP": m["AP"], "int8_infer_p50_ms": p50(m, "infer"), "int8_e2e_p50_ms": p50(m, "end_to_end"),
            "int8_executed": m.get("executed_precision"), "device_form_e2e_p50_ms": p50(device, "end_to_end")}


def head_and_tail(cfg: PipelineConfig, k: int = 5) -> tuple[list[str], list[str]] | None:
    """The k most and k least frequent classes of a long-tailed training split, by its boxes (None when
    the split is balanced: data.generator.long_tail_ratio unset or 1)."""
    generator = cfg.data.generator
    if generator is None or generator.long_tail_ratio == 1.0:
        return None
    train = load_split(cfg.data, "train")
    # labels covers every image of the file; the split's own images are those it trains on
    counts = Counter(int(label) for image in train.images for label in train.labels[image["id"]])
    ranked = sorted(range(len(train.class_names)), key=lambda c: -counts[c])
    return [train.class_names[c] for c in ranked[:k]], [train.class_names[c] for c in ranked[-k:]]


def add_head_tail(row: dict[str, Any], classes: tuple[list[str], list[str]]) -> None:
    """Mean per-class AP of the head and of the tail classes, on val and (when held out) the selection split.
    A class with no box in the split has no AP (None) and is left out; a group with none of its classes there
    gets no figure."""
    for prefix in ("", "select_"):
        per_class = row.get(f"{prefix}per_class_AP") or {}
        for name, group in zip(("head_AP", "tail_AP"), classes):
            present = [per_class[c] for c in group if per_class.get(c) is not None]
            if present:
                row[f"{prefix}{name}"] = statistics.fmean(present)


def table(rows: dict[str, dict[str, Any]], teacher: dict[str, Any]) -> str:
    base, top = rows.get("none", {}).get("AP"), teacher["AP"]
    select = any("select_AP" in m for m in rows.values())
    cells = [["teacher", *(f"{100 * (teacher.get(c) or 0):.1f}" for c in COLUMNS), *([""] if select else []),
              *[""] * len(_head_tail_columns(rows)), *[""] * len(_int8_columns(rows)), "", ""]]
    for name, m in rows.items():
        gap = "" if base is None or name == "none" or top == base else f"{100 * (m['AP'] - base) / (top - base):.0f}%"
        chosen = [f"{100 * m['select_AP']:.1f}" if "select_AP" in m else ""] if select else []
        cells.append([f"student {name}", *(f"{100 * (m.get(c) or 0):.1f}" for c in COLUMNS), *chosen,
                      *_head_tail_cells(m, rows), *_int8_cells(m, rows), gap,
                      "" if m.get("train_min") is None else m["train_min"]])
    return markdown_table(["model", *COLUMNS, *(["selection AP"] if select else []), *_head_tail_columns(rows),
                           *_int8_columns(rows), "gap closed", "train min"], cells)


HEAD_TAIL = ("head_AP", "tail_AP", "select_head_AP", "select_tail_AP")
# averaged over the seeds that have them
DEPLOYED = ("train_min", "int8_AP", "int8_infer_p50_ms", "int8_e2e_p50_ms", "device_form_e2e_p50_ms")


def _head_tail_keys(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The head/tail figures any row holds: a table's columns."""
    return [k for k in HEAD_TAIL if any(k in r for r in rows.values())]


def _head_tail_columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    return [k.replace("select_", "selection ").replace("_AP", " AP") for k in _head_tail_keys(rows)]


def _head_tail_cells(row: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{100 * row[k]:.1f}" if k in row else "" for k in _head_tail_keys(rows)]


def _int8_columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    return ["OpenVINO INT8 AP", "INT8 infer p50 ms"] if any(r.get("int8_AP") is not None for r in rows.values()) else []


def _int8_cells(row: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[str]:
    if not _int8_columns(rows):
        return []
    if row.get("int8_AP") is None:
        return ["", ""]
    return [f"{100 * row['int8_AP']:.2f}", f"{row['int8_infer_p50_ms']:.2f}" if row.get("int8_infer_p50_ms") else ""]


def seed_dir(out: Path, seed: int, home: int) -> Path:
    """Where one seed's variants go: out/ for the config's own seed (as a one-seed ablation writes them),
    out/seed<k>/ for any other, so that a seed always finds its own runs whatever --seeds lists."""
    return out if seed == home else out / f"seed{seed}"


def changed_setting(checkpoint: Path, cfg: PipelineConfig, teacher: Path) -> str | None:
    """How a variant's existing checkpoint was trained differently from what cfg would train now
    ('section.key: X there, Y now'), or None (pipeline.reuse)."""
    from pipeline import reuse

    return reuse.changed_setting(checkpoint, "student", cfg.student.train, cfg.student.model, cfg.distill, teacher)


def summarise(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per variant, over the seeds that ran it: mean and sample standard deviation of AP (None below two
    seeds), mean AP50 / AP75, AP per seed, and the gain over `none` paired seed by seed (mean, min, max)."""
    names = list(dict.fromkeys(n for rows in per_seed.values() for n in rows))
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = {seed: rows[name] for seed, rows in per_seed.items() if name in rows}
        ap = [m["AP"] for m in runs.values()]
        row: dict[str, Any] = {"seeds": list(runs), "AP_per_seed": ap, "AP": statistics.fmean(ap),
                               "AP_sd": statistics.stdev(ap) if len(ap) > 1 else None,
                               **{c: statistics.fmean(m[c] for m in runs.values()) for c in ("AP50", "AP75")}}
        selected = [m["select_AP"] for m in runs.values() if "select_AP" in m]
        if selected:
            row.update(select_AP=statistics.fmean(selected), select_AP_per_seed=selected)
        for key in (*HEAD_TAIL, *DEPLOYED):
            values = [m[key] for m in runs.values() if m.get(key) is not None]
            if values:
                row.update({key: statistics.fmean(values), f"{key}_per_seed": values})
        gains = [m["AP"] - per_seed[seed]["none"]["AP"] for seed, m in runs.items() if "none" in per_seed[seed]]
        if name != "none" and gains:
            row.update(gain=statistics.fmean(gains), gain_min=min(gains), gain_max=max(gains), gain_seeds=len(gains))
        summary[name] = row
    return summary


def seeds_table(summary: dict[str, dict[str, Any]], teacher: dict[str, Any]) -> str:
    """The multi-seed table in AP percent; gap closed from the mean gain; the selection split's mean AP
    (what configurations are chosen on) when it was held out."""
    top, base = teacher["AP"], summary.get("none", {}).get("AP")
    select = any("select_AP" in r for r in summary.values())
    timed = any(r.get("train_min") is not None for r in summary.values())
    cells = [["teacher", "", f"{100 * top:.1f}", "", "", f"{100 * (teacher.get('AP50') or 0):.1f}",
              f"{100 * (teacher.get('AP75') or 0):.1f}", *([""] if select else []),
              *[""] * len(_head_tail_columns(summary)), *[""] * len(_int8_columns(summary)), "", "",
              *([""] if timed else [])]]
    for name, r in summary.items():
        sd = "" if r["AP_sd"] is None else f"{100 * r['AP_sd']:.2f}"
        gain = gap = ""
        if "gain" in r:
            gain = f"{100 * r['gain']:+.2f} [{100 * r['gain_min']:+.1f}, {100 * r['gain_max']:+.1f}]"
            if base is not None and top != base:
                gap = f"{100 * r['gain'] / (top - base):.0f}%"
        chosen = [f"{100 * r['select_AP']:.2f}" if "select_AP" in r else ""] if select else []
        cells.append([f"student {name}", len(r["seeds"]), f"{100 * r['AP']:.2f}", sd,
                      ", ".join(f"{100 * a:.1f}" for a in r["AP_per_seed"]), f"{100 * r['AP50']:.1f}",
                      f"{100 * r['AP75']:.1f}", *chosen, *_head_tail_cells(r, summary), *_int8_cells(r, summary),
                      gain, gap, *([f"{r['train_min']:.1f}" if r.get("train_min") is not None else ""]
                                   if timed else [])])
    return markdown_table(["model", "seeds", "AP mean", "AP sd", "AP per seed", "AP50", "AP75",
                           *(["selection AP mean"] if select else []), *_head_tail_columns(summary),
                           *_int8_columns(summary), "gain over none, paired: mean [min, max]", "gap closed",
                           *(["train min (mean)"] if timed else [])], cells)


def run_seeds(cfg: PipelineConfig, path: Path, names: list[str], out: Path, seeds: list[int],
              int8: bool = False) -> tuple[dict[int, dict[str, dict[str, Any]]], dict[str, Any]]:
    """run_ablation once per seed, every seed checked before any trains (finished runs are reused); with
    more than one seed, also write out/ablation-seeds.{md,json}. Returns ({seed: rows}, teacher metrics)."""
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: repeated seed in {seeds}")
    seeded = {seed: copy.deepcopy(cfg) for seed in seeds}
    for seed, c in seeded.items():
        c.student.train.seed = seed
        check_variants(c, path, names, seed_dir(out, seed, cfg.student.train.seed))  # every seed before any trains
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    teacher: dict[str, Any] = {}
    for seed, c in seeded.items():
        per_seed[seed], teacher = _train_variants(c, path, names, seed_dir(out, seed, cfg.student.train.seed), int8)
    if len(seeds) > 1:
        summary = summarise(per_seed)
        text = seeds_table(summary, teacher)
        print(text)
        header = (f"# Distillation ablation over seeds {', '.join(map(str, seeds))}\n\nTeacher {path}; "
                  f"student {cfg.student.model.name} {cfg.student.model.backbone}, "
                  f"{cfg.student.train.epochs} epochs. AP on {teacher['num_images']} val images (percent). "
                  f"Seed {cfg.student.train.seed}'s runs are in {out}/, seed k's in {out}/seed<k>/. The "
                  "gain is paired: each seed's variant against that seed's `none`.\n\n")
        write_text(out / "ablation-seeds.md", header + text + "\n")
        classes = head_and_tail(cfg)
        write_json(out / "ablation-seeds.json", {"teacher": {c: teacher.get(c) for c in COLUMNS},
                                                 "teacher_checkpoint": str(path),
                                                 **({"head_classes": classes[0], "tail_classes": classes[1]}
                                                    if classes else {}),
                                                 "seeds": seeds, "variants": summary,
                                                 "per_seed": {str(s): rows for s, rows in per_seed.items()}})
    return per_seed, teacher


def variant_config(cfg: PipelineConfig, name: str, out: Path) -> PipelineConfig:
    """cfg with the variant's distill settings, writing under out/<name>/."""
    variant = copy.deepcopy(cfg)
    for key, value in VARIANTS[name].items():
        setattr(variant.distill, key, value)
    variant.runs_dir, variant.run = str(out.parent), out.name
    return variant


def check_variants(cfg: PipelineConfig, path: Path, names: list[str], out: Path) -> None:
    """Refuse, before any training, unknown variants, a missing teacher, and finished or cut runs under
    out/ that were trained with another teacher or other settings (they would be reused as this run's)."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise InputError(f"--variants: unknown variant '{unknown[0]}'; valid: {', '.join(VARIANTS)}")
    if not path.is_file():
        raise InputError(f"teacher checkpoint not found: {path} (run `make teacher` first, or pass --teacher)")
    for name in names:
        existing = out / name / "last.pt"
        if existing.is_file() and (change := changed_setting(existing, variant_config(cfg, name, out), path)):
            raise InputError(f"{existing}: trained with other settings ({change}); pass another --out, "
                             f"or remove {out / name} to train it again")


def run_ablation(cfg: PipelineConfig, path: Path, names: list[str], out: Path,
                 int8: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Check, then train each variant (finished ones are reused) and write out/ablation.{md,json}; return
    (rows, teacher metrics). int8: each variant's OpenVINO INT8 file built and measured too."""
    check_variants(cfg, path, names, out)
    return _train_variants(cfg, path, names, out, int8)


def _train_variants(cfg: PipelineConfig, path: Path, names: list[str], out: Path,
                    int8: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    from pipeline.stages.distill import distill_student

    rows: dict[str, dict[str, Any]] = {}
    classes = head_and_tail(cfg)
    for name in names:
        variant = variant_config(cfg, name, out)
        print(f"[ablation] {name}: {VARIANTS[name]}", flush=True)
        metrics = distill_student(variant, str(path), resume=True, progress=sys.stderr.isatty(), out_name=name)
        # the time comes from the run's own log: this call's clock reads ~0 for a reused run
        rows[name] = {**{c: metrics.get(c) for c in COLUMNS}, "train_min": None, "threads": None,
                      **training_time(out / name / "log.jsonl"),
                      "per_class_AP": metrics.get("per_class_AP")}
        if int8:
            rows[name].update(int8_deployment(variant, out / name))
        select = selection_metrics(variant, out / name / "last.pt")
        if select is not None:
            rows[name].update(select_AP=select["AP"], select_per_class_AP=select.get("per_class_AP"))
        if classes:
            add_head_tail(rows[name], classes)
        print(f"[ablation] {name}: AP {100 * metrics['AP']:.1f}"
              + (f", selection AP {100 * select['AP']:.1f}" if select is not None else ""), flush=True)
    teacher = teacher_metrics(cfg, path)
    text = table(rows, teacher)
    print(text)
    header = (f"# Distillation ablation\n\nTeacher {path}; student {cfg.student.model.name} "
              f"{cfg.student.model.backbone} ({cfg.student.model.head_channels}-channel head), "
              f"{cfg.student.train.epochs} epochs, seed {cfg.student.train.seed}. AP on {teacher['num_images']} val "
              "images (percent).\n\n")
    write_text(out / "ablation.md", header + text + "\n")
    write_json(out / "ablation.json", {"teacher": {c: teacher.get(c) for c in COLUMNS}, "teacher_checkpoint": str(path),
                                       **({"head_classes": classes[0], "tail_classes": classes[1]} if classes else {}),
                                       "variants": {n: {"distill": VARIANTS[n], **rows[n]} for n in rows}})
    return rows, teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd ablation", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/pipelines/default.yaml")
    parser.add_argument("--teacher", help="teacher checkpoint (default: runs/<run>/teacher/last.pt)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", help="comma-separated student seeds (default: student.train.seed); that seed's "
                        "runs go to OUT/, the others' to OUT/seed<k>/, and the summary to OUT/ablation-seeds.md")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--int8", action="store_true", help="also export each variant and measure its OpenVINO "
                        "INT8 file (AP, latency): the quantize stage in OUT/<variant>/deploy/")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        try:
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [cfg.student.train.seed]
        except ValueError as exc:
            raise InputError(f"--seeds: expected comma-separated integers, got '{args.seeds}'") from exc
        with run_lock(Path(args.out), "edgekd ablation"):  # each variant's folder is a run under it
            run_seeds(cfg, paths.teacher_checkpoint(cfg, args.teacher), args.variants.split(","), Path(args.out), seeds,
                      args.int8)

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
