"""Plateau seed 0: AP of the teacher and of given student checkpoints on val, the selection split (the last
300 training scenes) and the first 300 of the students' own training scenes, to see whether the
selection-vs-val gap is fit to the Fashion-MNIST train item pool.

Usage: python docs/data/plateau_fit_check.py <data root> <student last.pt> ..."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from deploy.evaluate import coco_eval
from distill.checkpoint import load_model_state
from distill.data.fashion_mnist import CLASSES
from distill.models.detector import build_detector, load_detector
from distill.validate import predict
from distill.weights_file import check_weights
from pipeline.config import load_config
from pipeline.stages.data import load_split

torch.set_num_threads(1)
cfg = load_config(Path("configs/pipelines/default.yaml"))
cfg.data.root = sys.argv[1]
cfg.data.select_images = 300
splits = {"val": load_split(cfg.data, "val"), "select": load_split(cfg.data, "select")}
train = load_split(cfg.data, "train")
splits["train300"] = replace(train, images=train.images[:300])
state = check_weights(cfg.teacher.checkpoint, cfg.teacher.model, list(CLASSES), cfg.teacher.checkpoint_sha256)
teacher = build_detector(replace(cfg.teacher.model, pretrained="none"), len(CLASSES)).eval()
load_model_state(teacher, state["model"], cfg.teacher.checkpoint)
models = {"teacher": (teacher, tuple(cfg.teacher.model.input_size))}
for name in sys.argv[2:]:
    m, _, _ = load_detector(Path(name))
    models[name] = (m, tuple(m.cfg.input_size))
out = {}
for name, (m, size) in models.items():
    out[name] = {s: round(100 * coco_eval(ds, predict(m, ds, size))["AP"], 2) for s, ds in splits.items()}
    print(name, out[name], flush=True)
print(json.dumps(out))
