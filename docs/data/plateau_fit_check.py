"""Plateau seed 0: AP of the teacher and of given student checkpoints on val, the selection split (the last
300 training scenes) and the first 300 of the students' own training scenes, to see whether the
selection-vs-val gap is fit to the Fashion-MNIST train item pool.

Usage: python docs/data/plateau_fit_check.py [--no-teacher] <data root> <label>=<student last.pt> ...
(--no-teacher: the students only; the teacher's figures do not change between calls.
plateau-fit-seed0.json is the JSON it prints last, under "AP", with what / command / machine added.)"""
import json
import sys
from pathlib import Path

import torch

from deploy.evaluate import coco_eval
from distill.models.detector import load_detector
from distill.teachers import load_teacher
from distill.validate import predict, subset
from pipeline.config import load_config
from pipeline.stages.data import load_split

torch.set_num_threads(1)
args = sys.argv[1:]
with_teacher = "--no-teacher" not in args
args = [a for a in args if a != "--no-teacher"]
cfg = load_config(Path("configs/pipelines/default.yaml"))
cfg.data.root = args[0]
cfg.data.select_images = 300
splits = {"val": load_split(cfg.data, "val"), "select": load_split(cfg.data, "select")}
splits["train300"] = subset(load_split(cfg.data, "train"), 300)
models = {}
if with_teacher:
    teacher, _ = load_teacher(cfg, splits["val"].class_names)  # the shipped file, its hash checked
    models["teacher"] = (teacher, tuple(cfg.teacher.model.input_size))
for arg in args[1:]:
    label, sep, path = arg.partition("=")
    label, path = (label, path) if sep else (arg, arg)
    if label in models:
        sys.exit(f"plateau_fit_check: the label {label!r} is given twice")
    m, _, _ = load_detector(Path(path))
    models[label] = (m, tuple(m.cfg.input_size))
out = {}
for name, (m, size) in models.items():
    out[name] = {s: round(100 * coco_eval(ds, predict(m, ds, size))["AP"], 2) for s, ds in splits.items()}
    print(name, out[name], flush=True)
print(json.dumps(out))
