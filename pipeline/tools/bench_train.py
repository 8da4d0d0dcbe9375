"""Training speed of the pipeline's teacher, student and distillation step on this machine (a
benchmark, not a test).

    python -m pipeline.tools.bench_train --config configs/pipelines/default.yaml [--steps 10] [key=value ...]

Runs a few warm-up steps then timed steps of forward + loss + backward + SGD on random images of the
model's input size with fixed boxes: the teacher and the student alone (GFL losses), and the student
distilled from the teacher (the configured distill method: teacher forward under no_grad added).
Prints seconds per step, images per second, the distillation / student-only step ratio and the
process's peak resident memory; --json writes the same.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from deploy.files import write_json
from pipeline.config import load_config


def bench(role_cfg, num_classes: int, steps: int, warmup: int, distill_from=None, distill_cfg=None) -> dict:
    """Median step time of one configuration; distill_from (a teacher role config) adds the teacher."""
    import torch  # here, not at the top: `edgekd bench-train --help` loads no torch

    from distill.distiller import Distiller
    from distill.losses.detection import make_detection_loss
    from distill.models.detector import build_detector

    torch.manual_seed(0)
    model = build_detector(role_cfg.model, num_classes).train()
    loss_fn = make_detection_loss(role_cfg.model)
    if distill_from is not None:
        teacher = build_detector(distill_from.model, num_classes)
        loss_fn = Distiller(teacher, role_cfg.model, distill_cfg, torch.device("cpu"), role_cfg.train.channels_last)
    if role_cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    n, (h, w) = role_cfg.train.batch_size, role_cfg.model.input_size
    images = torch.randn(n, 3, h, w)
    if role_cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.5 * w, 0.4 * h, 0.9 * w, 0.9 * h]])
    targets = [{"boxes": box, "labels": torch.tensor([1, 2])} for _ in range(n)]
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        losses = loss_fn(model, images, targets)
        optimizer.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    s_per_step = sorted(times)[len(times) // 2]
    return {"backbone": role_cfg.model.backbone, "input_size": [h, w], "batch": n, "params_M": round(params / 1e6, 2),
            "s_per_step": round(s_per_step, 3), "images_per_s": round(n / s_per_step, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd bench-train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/pipelines/default.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too
    import torch

    cfg = load_config(args.config, args.overrides)
    rows = {role: bench(getattr(cfg, role), args.classes, args.steps, args.warmup) for role in ("teacher", "student")}
    rows[f"distill ({cfg.distill.method})"] = bench(cfg.student, args.classes, args.steps, args.warmup, cfg.teacher,
                                                    cfg.distill)
    ratio = rows[f"distill ({cfg.distill.method})"]["s_per_step"] / rows["student"]["s_per_step"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'role':<15}{'backbone':<20}{'input':>10}{'batch':>6}{'params M':>9}{'s/step':>8}{'img/s':>7}")
    for role, r in rows.items():
        print(f"{role:<15}{r['backbone']:<20}{'x'.join(map(str, r['input_size'])):>10}{r['batch']:>6}"
              f"{r['params_M']:>9}{r['s_per_step']:>8}{r['images_per_s']:>7}")
    print(f"distillation step / student-only step: {ratio:.2f}x")
    print(f"peak resident memory: {peak_mb:.0f} MB")
    if args.json:
        write_json(args.json, {"rows": rows, "distill_over_student": round(ratio, 3), "peak_rss_mb": round(peak_mb),
                               "threads": torch.get_num_threads()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
