"""Where BCKD's two terms put their weight (a diagnostic, not a test): for a teacher and one or more
student checkpoints, on training images without augmentation, the share of each term's mass on
positive (ATSS-assigned) locations, the IoU-term weight there and elsewhere, and whether the teacher's
boxes are better than the student's where a ground-truth box says what "better" means.

    python -m pipeline.tools.diagnose_bckd --teacher runs/default/teacher/last.pt \\
        --student init --student runs/ablation/none/last.pt [--images 96] [--json runs/diagnose-bckd.json]

`init` is the student as training starts (seed 0, its pretrained backbone), built from the first
checkpoint's model config. Writes a markdown table to stdout and the figures to --json.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from deploy.errors import InputError
from deploy.files import write_json
from deploy.tables import markdown_table
from pipeline.cli import guarded
from pipeline.config import load_config
from pipeline.stages.data import load_split

if TYPE_CHECKING:  # torch and the models load when the diagnosis runs, not for `edgekd diagnose-bckd --help`
    import torch

    from distill.models.detector import ModelConfig


def term_mass(teacher: torch.nn.Module, student: torch.nn.Module, student_cfg: ModelConfig, images: torch.Tensor,
              targets: list[dict]) -> dict[str, float]:
    """Sums over one batch, per location i (BCKD.md's notation): the cls term's mass
    sum_c BCE(p_s, p_t)|p_t - p_s|, the loc term's mass v_i (1 - GIoU), v_i, split positive / all;
    and on positives, IoU of the teacher's and the student's box with the assigned ground truth."""
    import torch
    from torchvision.ops import box_iou

    from distill.losses.bckd import bckd_cls_loss, bckd_loc_loss
    from distill.losses.detection import head_loss

    with torch.no_grad():
        s_out, t_out = student(images), teacher(images)
        assigned = head_loss(student_cfg)(s_out, targets)[1]
        c = s_out["cls_logits"].shape[-1]
        s_logits, t_logits = s_out["cls_logits"].reshape(-1, c).float(), t_out["cls_logits"].reshape(-1, c).float()
        v = (t_logits.sigmoid() - s_logits.sigmoid()).abs().max(1).values
        s_boxes = student.head.decode(s_out)[0].reshape(-1, 4)  # input pixels: comparable with the ground truth
        t_boxes = teacher.head.decode(t_out)[0].reshape(-1, 4)
        pos = assigned.labels >= 0

        def masses(rows: torch.Tensor | slice) -> tuple[float, float]:  # the losses' sums (avg_factor 1) over rows
            return (float(bckd_cls_loss(s_logits[rows], t_logits[rows], avg_factor=1)),
                    float(bckd_loc_loss(s_boxes[rows], t_boxes[rows], s_logits[rows], t_logits[rows], avg_factor=1)))

        (cls_pos, loc_pos), (cls_all, loc_all) = masses(pos), masses(slice(None))
        iou_t = box_iou(t_boxes[pos], assigned.boxes[pos]).diagonal()
        iou_s = box_iou(s_boxes[pos], assigned.boxes[pos]).diagonal()
        return {"locations": float(pos.numel()), "positives": float(pos.sum()),
                "cls_pos": cls_pos, "cls_all": cls_all, "loc_pos": loc_pos, "loc_all": loc_all,
                "v_pos": float(v[pos].sum()), "v_all": float(v.sum()),
                "iou_teacher": float(iou_t.sum()), "iou_student": float(iou_s.sum()),
                "teacher_better": float((iou_t > iou_s).sum())}


def summary(sums: dict[str, float]) -> dict[str, float]:
    """Shares and means from term_mass sums accumulated over batches."""
    pos, n = max(sums["positives"], 1.0), max(sums["locations"], 1.0)
    return {"positive_share": sums["positives"] / n,
            "cls_mass_on_positives": sums["cls_pos"] / max(sums["cls_all"], 1e-12),
            "loc_mass_on_positives": sums["loc_pos"] / max(sums["loc_all"], 1e-12),
            "v_mean_positives": sums["v_pos"] / pos,
            "v_mean_others": (sums["v_all"] - sums["v_pos"]) / max(n - pos, 1.0),
            "iou_teacher_gt": sums["iou_teacher"] / pos, "iou_student_gt": sums["iou_student"] / pos,
            "teacher_better_share": sums["teacher_better"] / pos}


def table(results: dict[str, dict[str, Any]]) -> str:
    """One column per student, one row per figure."""
    rows = [("positive locations", "positive_share", "{:.1%}"),
            ("cls term mass on positives", "cls_mass_on_positives", "{:.1%}"),
            ("loc term mass on positives", "loc_mass_on_positives", "{:.1%}"),
            ("loc weight v, mean on positives", "v_mean_positives", "{:.3f}"),
            ("loc weight v, mean elsewhere", "v_mean_others", "{:.3f}"),
            ("IoU teacher box / GT (positives)", "iou_teacher_gt", "{:.3f}"),
            ("IoU student box / GT (positives)", "iou_student_gt", "{:.3f}"),
            ("teacher box better (positives)", "teacher_better_share", "{:.1%}")]
    return markdown_table(["", *results], [[label, *(fmt.format(r[key]) for r in results.values())]
                                           for label, key, fmt in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd diagnose-bckd", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/pipelines/default.yaml", help="for the dataset")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", action="append", required=True, help="a checkpoint, or `init`; repeatable")
    parser.add_argument("--images", type=int, default=96, help="training images, evenly spaced")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", default="runs/diagnose-bckd.json")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too

    def body() -> None:
        from distill.data.dataset import DetectionDataset, collate
        from distill.distiller import check_pair
        from distill.models.detector import ModelConfig, build_detector, load_detector
        from distill.teachers import load_teacher

        cfg = load_config(args.config, args.overrides)
        train = load_split(cfg.data, "train")
        teacher, teacher_info = load_teacher(cfg, train.class_names, args.teacher)
        classes = teacher_info.classes
        if args.images < 1 or args.images > len(train.images):
            raise InputError(f"--images {args.images}: the train split holds {len(train.images)} images")
        dataset = None
        picked = [round(i * len(train.images) / args.images) for i in range(args.images)]
        first_cfg = None
        results: dict[str, dict[str, float]] = {}
        for name in args.student:
            if name == "init":
                if first_cfg is None:
                    raise InputError("--student init: give a student checkpoint first, for its model config")
                student, student_cfg = build_detector(first_cfg, len(classes), seed=0).eval(), first_cfg
            else:
                student, student_classes, state = load_detector(name)
                student_cfg = first_cfg = ModelConfig(**state["config"])
                check_pair(teacher, student, classes, student_classes, tuple(student_cfg.input_size), args.teacher)
            dataset = dataset or DetectionDataset(train, tuple(student_cfg.input_size))  # both see this batch
            sums: dict[str, float] = {}
            for b in range(0, len(picked), args.batch):
                images, targets = collate([dataset[i] for i in picked[b:b + args.batch]])
                for k, v in term_mass(teacher, student, student_cfg, images, targets).items():
                    sums[k] = sums.get(k, 0.0) + v
            results[name] = summary(sums)
        print(table(results))
        write_json(args.json, {"teacher": args.teacher, "images": args.images, "students": results})

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
