"""The settings of training, distillation and QAT (the `teacher.train`, `student.train`, `distill` and `qat`
sections of a pipeline config): plain dataclasses, importable without torch, so that reading a config
(`edgekd status`, `--help`) loads no training code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or Inf; the message names the step and the term (here, beside the settings,
    so that the command line maps it to its exit code without loading the trainer)."""


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 8  # per process
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01  # for batch_size x processes as given; not rescaled
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4
    warmup_steps: int = 500  # linear warm-up from warmup_ratio * lr
    warmup_ratio: float = 0.001
    schedule: Literal["step", "cosine"] = "step"
    decay_epochs: list[int] = field(default_factory=lambda: [8, 11])  # step schedule: x gamma at these epochs
    gamma: float = 0.1
    min_lr_ratio: float = 0.01  # cosine schedule ends at min_lr_ratio * lr
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    augment: list[str] = field(default_factory=lambda: ["hflip", "photometric"])  # see distill/data/dataset.py
    amp: bool = True  # mixed precision (CUDA only)
    channels_last: bool = True  # NHWC memory format (faster on CUDA and, with oneDNN, on CPU)
    eval_every: int = 1  # validate every N epochs (and after the last)
    max_val_images: int = 0  # validate during training on the first N val images (0 = all); final eval uses all
    # the split the evaluations during training (their log lines, best.pt) read; `select` (data.select_images
    # held-out training images) draws a learning curve, and chooses a schedule, without looking at val
    monitor: Literal["val", "select"] = "val"
    log_every: int = 10  # steps between log.jsonl lines
    save_every_steps: int = 0  # extra mid-epoch checkpoints (0 = at epoch ends only)
    workers: int = 2  # data-loading processes per training process
    seed: int = 0
    max_steps: int = 0  # stop after this many steps in all (0 = run every epoch); smoke runs and tests
    max_train_images: int = 0  # train on the first N images (0 = all)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

METHODS = ("none", "bckd", "kd", "kd_pos", "ld")  # DistillConfig.method's values


@dataclass
class DistillConfig:
    # kd: softmax KD at every location; kd_pos: softmax KD at positive locations only, as the LD codebase
    method: Literal["none", "bckd", "kd", "kd_pos", "ld"] = "bckd"
    # BCKD's terms: cls, loc, and kd (softmax KD beside them, with kd_weight: BCKD's absolute per-class
    # protocol plus KD's relative one)
    terms: list[Literal["cls", "loc", "kd"]] = field(default_factory=lambda: ["cls", "loc"])
    cls_weight: float = 1.0  # BCKD classification term
    cls_region: Literal["all", "negatives"] = "all"  # where BCKD's classification term applies
    loc_weight: float = 4.0  # BCKD IoU localization term
    beta: float = 1.0  # BCKD modulating exponent
    kd_weight: float = 1.0  # softmax KD
    kd_temperature: float = 1.0
    kd_pos_weight: float = 10.0  # kd_pos, as HikariTJU/LD's GFL configs (loss_kd weight 10, T = 2)
    kd_pos_temperature: float = 2.0
    ld_weight: float = 0.25  # LD, as mmdet's LD config
    ld_temperature: float = 10.0
    teacher_half: bool = True  # teacher forward in float16 on CUDA
    positive_levels_only: bool = False  # the official code's quirk: only FPN levels with a positive in the batch
    # Not the paper's method, a diagnostic: the IoU term only at positive locations. On the embedded
    # default 94% of its mass lies on background locations, where boxes have no target.
    loc_positives_only: bool = False
    # Diagnostics of the IoU term's harm (not the paper's method). loc_detached_features: the IoU term's student
    # boxes come from the head run a second time on detached FPN features, so that term trains the
    # regression branch only and cannot pull the small shared FPN and backbone. until_epoch: the
    # distillation terms only in the first `until_epoch` epochs; the student trains alone after.
    loc_detached_features: bool = False
    until_epoch: int | None = None
    # Pipeline gate: when the student-alone stage runs too, the distilled student must reach its AP plus
    # this many AP points (null: no gate).
    min_gain_over_baseline: float | None = 0.0


def _qat_schedule() -> TrainConfig:
    # NVIDIA's QAT guidance (pytorch-quantization and ModelOpt docs): about 10% of the original schedule,
    # annealed from about 1% of its learning rate: 60 steps of batch 8 (the default distillation runs
    # 561) at 1e-5 (it runs at 1e-3). docs/qat.md compares 60 and 187 steps.
    return TrainConfig(epochs=1, max_train_images=480, batch_size=8, optimizer="adamw", lr=1e-5, weight_decay=0.0,
                       warmup_steps=0, schedule="cosine", grad_clip=35.0, max_val_images=100, save_every_steps=50,
                       workers=1)


@dataclass
class QatConfig:
    # The fine-tuning schedule; its seed also picks the calibration images.
    train: TrainConfig = field(default_factory=_qat_schedule)
    # The teacher's terms added to the student's own losses (method none: the task losses alone).
    distill: DistillConfig = field(default_factory=DistillConfig)
    calib_images: int = 300  # training images the scales are calibrated on (as quantize.calib_images)
    max_map_drop: float = 0.5  # gate: the QAT model's AP may fall at most this far below the FP32 ONNX's
