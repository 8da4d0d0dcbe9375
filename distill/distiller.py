"""The distiller: a frozen teacher held explicitly beside the student, and the loss that adds the
distillation terms (BCKD, or the KD / LD baselines) to the student's own head losses (GFL, RetinaNet,
FCOS or ATSS).

The teacher runs in eval mode under no_grad on the same augmented batch (in half precision on CUDA
when asked). Teacher and student must share strides, levels, locations per level, anchors per
location, and classes; their heads may differ in family when those match (boxes are then compared in
input pixels).
"""

from __future__ import annotations

import torch
from torch import nn

from deploy.errors import InputError
from distill.losses.bckd import bckd_cls_loss, bckd_loc_loss
from distill.losses.detection import head_loss
from distill.losses.kd import ld_loss, positive_kd_loss, softmax_kd_loss
from distill.models.detector import ModelConfig
from distill.models.probe import probe
from distill.settings import DistillConfig

TERMS = ("cls", "loc", "kd")
# Anchor widths and heights may differ this much (relative) between teacher and student: torchvision
# truncates its RetinaNet anchor sizes to integers (40 for 32 x 2^(1/3) = 40.3) and rounds the boxes.
ANCHOR_TOLERANCE = 0.05




def check_pair(teacher: nn.Module, student: nn.Module, teacher_classes: list[str], student_classes: list[str],
               input_size: tuple[int, int], teacher_source: str,
               teacher_input_size: tuple[int, int] | None = None) -> None:
    """Refuse a teacher/student pair whose locations or classes differ, each probed at its own input size."""
    if list(teacher_classes) != list(student_classes):
        raise InputError(f"{teacher_source}: teacher classes {list(teacher_classes)[:5]}... differ from the "
                         f"dataset's {list(student_classes)[:5]}... (train the teacher on this dataset)")
    t_k, s_k = teacher.head.anchors_per_location, student.head.anchors_per_location
    if t_k != s_k:
        raise InputError(f"{teacher_source}: teacher ({teacher.cfg.name}) has {t_k} "
                         f"anchors per location, student ({student.cfg.name}) {s_k}; BCKD "
                         "pairs them anchor by anchor, so the anchor layouts must match")
    device = next(student.parameters()).device
    t = probe(teacher.float(), torch.zeros(1, 3, *(teacher_input_size or input_size), device=device))
    s = probe(student, torch.zeros(1, 3, *input_size, device=device))
    t_levels = torch.unique_consecutive(t["strides"], return_counts=True)
    s_levels = torch.unique_consecutive(s["strides"], return_counts=True)
    for what, a, b in (("strides", t_levels[0], s_levels[0]), ("locations per level", t_levels[1], s_levels[1])):
        if a.shape != b.shape or not torch.equal(a, b):
            raise InputError(f"{teacher_source}: teacher and student differ in {what}: teacher {a.int().tolist()} vs "
                             f"student {b.int().tolist()} (inputs {list(teacher_input_size or input_size)} and "
                             f"{list(input_size)}); BCKD pairs them location by location")
    if t["points"].shape != s["points"].shape or not torch.allclose(t["points"], s["points"]):
        offset = (t["points"] - s["points"]).abs().max().item() if t["points"].shape == s["points"].shape else None
        raise InputError(f"{teacher_source}: teacher and student place their locations differently"
                         + (f" (by up to {offset:g} px: set student.model.point_offset to the teacher's, 0.0 for "
                            "mmdetection and torchvision teachers)" if offset is not None else ""))
    if t_k > 1:  # several anchors per location: the i-th of the teacher's must be the i-th of the student's
        if "anchors" not in t or "anchors" not in s:
            raise InputError(f"{teacher_source}: {t_k} anchors per location, but one side reports no anchor boxes to "
                             "compare; BCKD pairs them anchor by anchor")
        t_wh, s_wh = (t["anchors"][:, 2:] - t["anchors"][:, :2]), (s["anchors"][:, 2:] - s["anchors"][:, :2])
        worst = ((t_wh - s_wh).abs() / s_wh.clamp(min=1e-6)).max().item()
        if worst > ANCHOR_TOLERANCE:
            raise InputError(f"{teacher_source}: teacher and student anchors differ in width or height by up to "
                             f"{100 * worst:.0f}% (allowed {100 * ANCHOR_TOLERANCE:.0f}%; model.octave_base_scale, "
                             "model.scales_per_octave); BCKD pairs them anchor by anchor")
    if t["cls_logits"].shape[-1] != s["cls_logits"].shape[-1]:
        raise InputError(f"{teacher_source}: teacher has {t['cls_logits'].shape[-1]} classes, student "
                         f"{s['cls_logits'].shape[-1]}")


class Distiller:
    """Calls like the trainer's loss function: (student, images, targets) -> named loss terms."""

    def __init__(self, teacher: nn.Module, student_cfg: ModelConfig, cfg: DistillConfig, device: torch.device,
                 channels_last: bool = False):
        self.cfg, self.student_cfg = cfg, student_cfg
        if cfg.method == "ld" and not (teacher.cfg.name == student_cfg.name == "gfl"):
            raise InputError(f"distill.method: ld distils GFL's box distributions; teacher is {teacher.cfg.name}, "
                             f"student {student_cfg.name} (use bckd or kd)")
        self.loss = head_loss(student_cfg)
        self.same_family = teacher.cfg.name == student_cfg.name
        self.teacher = teacher.to(device).eval()
        if channels_last:  # match the student's batches: a layout mismatch costs ~20% of the teacher forward
            self.teacher.to(memory_format=torch.channels_last)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.half = cfg.teacher_half and device.type == "cuda"
        if self.half:
            self.teacher.half()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The trainer's epoch (0-based), for distill.until_epoch."""
        self.epoch = epoch

    def __call__(self, student: nn.Module, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        detached_loc = self.cfg.method == "bckd" and "loc" in self.cfg.terms and self.cfg.loc_detached_features
        if detached_loc:
            if isinstance(student, nn.parallel.DistributedDataParallel):
                raise InputError("distill.loc_detached_features: a single-process diagnostic (run with one process)")
            features = student.features(images)
            out = student.head(features)
        else:
            out = student(images)
        losses, assigned = self.loss(out, targets)
        if self.cfg.method == "none" or (self.cfg.until_epoch is not None and self.epoch >= self.cfg.until_epoch):
            return losses
        with torch.no_grad():
            t_out = self.teacher(images.half() if self.half else images)
        n, a, c = out["cls_logits"].shape
        s_logits, t_logits = out["cls_logits"].reshape(n * a, c), t_out["cls_logits"].reshape(n * a, c)
        weight = assigned.valid.float() if assigned.valid is not None else None  # padding: weight 0 (w_i)
        if self.cfg.positive_levels_only:
            level = self._level_mask(out, assigned.labels, n)
            weight = level if weight is None else weight * level
        terms: dict[str, tuple[torch.Tensor, float]] = {}
        if self.cfg.method == "bckd":
            if "cls" in self.cfg.terms:
                cls_weight = weight
                if self.cfg.cls_region == "negatives":
                    neg = (assigned.labels < 0).float()
                    cls_weight = neg if weight is None else weight * neg
                terms["bckd_cls"] = (bckd_cls_loss(s_logits, t_logits, cls_weight, assigned.num_pos, self.cfg.beta),
                                     self.cfg.cls_weight)
            if "kd" in self.cfg.terms:
                terms["kd"] = (softmax_kd_loss(s_logits, t_logits, self.cfg.kd_temperature, assigned.num_pos, weight),
                               self.cfg.kd_weight)
            if "loc" in self.cfg.terms:
                s_loc = student.head([f.detach() for f in features]) if detached_loc else out
                s_boxes, t_boxes = self._boxes(student, s_loc), self._boxes(self.teacher, t_out)
                loc_weight = weight
                if self.cfg.loc_positives_only:
                    pos = (assigned.labels >= 0).float()
                    loc_weight = pos if weight is None else weight * pos
                terms["bckd_loc"] = (bckd_loc_loss(s_boxes, t_boxes, s_logits, t_logits, loc_weight, assigned.num_pos),
                                     self.cfg.loc_weight)
        elif self.cfg.method == "kd":
            terms["kd"] = (softmax_kd_loss(s_logits, t_logits, self.cfg.kd_temperature, assigned.num_pos, weight),
                           self.cfg.kd_weight)
        elif self.cfg.method == "kd_pos":
            pos = assigned.labels >= 0
            if weight is not None:
                pos = pos & (weight > 0)
            strides = out["strides"].repeat(n)
            terms["kd_pos"] = (positive_kd_loss(s_logits[pos], t_logits[pos], strides[pos],
                                                self.cfg.kd_pos_temperature),
                               self.cfg.kd_pos_weight)
        elif self.cfg.method == "ld":
            pos = assigned.labels >= 0
            r = out["bbox_dists"].shape[-1]
            s_d, t_d = out["bbox_dists"].reshape(n * a, 4, r)[pos], t_out["bbox_dists"].reshape(n * a, 4, r)[pos]
            q = s_logits[pos].detach().float().sigmoid().max(dim=1).values
            terms["ld"] = (ld_loss(s_d, t_d, q, self.cfg.ld_temperature), self.cfg.ld_weight)
        for name, (raw, w) in terms.items():
            losses[f"loss_{name}"] = raw * w
            losses[f"raw_{name}"] = raw.detach()
        return losses

    def _boxes(self, model: nn.Module, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoded boxes [N*A, 4] xyxy: in the head's own unit (GFL: stride units, as the official code)
        for a same-family pair, in input pixels otherwise. GIoU is scale invariant up to eps."""
        head = getattr(model, "module", model).head  # DDP wraps the student
        boxes = head.distill_boxes(outputs) if self.same_family else head.decode(outputs)[0]
        return boxes.reshape(-1, 4)

    @staticmethod
    def _level_mask(outputs: dict[str, torch.Tensor], labels: torch.Tensor, n: int) -> torch.Tensor:
        """1 at locations of FPN levels holding at least one positive in the batch, else 0: [N*A]."""
        strides = outputs["strides"].repeat(n)
        positive_strides = torch.unique(strides[labels >= 0])
        return torch.isin(strides, positive_strides).float()
