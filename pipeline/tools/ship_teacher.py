"""Turn a trained teacher run into the weights file the repo ships, with its model card beside it.

    python -m pipeline.tools.ship_teacher runs/teacher-converged/teacher --out weights/gfl_effl2_fashion_scenes.pt \\
        --command "make teacher ARGS=..."

Writes <out> (a float16 state dict with model config, classes and preprocessing) and <out>.md (SHA-256,
command, seed, epochs, wall time, machine, AP/AP50/AP75/APs/m/l on all val images and the AP per epoch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deploy import metrics_file
from deploy.errors import InputError
from deploy.files import read_jsonl, sha256_file, write_text
from deploy.machine import machine_info, machine_line
from deploy.tables import markdown_table
from pipeline.cli import guarded

MAX_MB = 12.0  # the before-stop size check allows files under weights/ up to 12 MiB


def epoch_curve(log: Path) -> list[dict[str, Any]]:
    """[{'epoch', 'step', 'AP', 'AP50', 'val_images'}] from a trainer's log.jsonl, one per evaluation."""
    rows = []
    for record in read_jsonl(log):
        if "val" in record:
            rows.append({"step": record["step"], "val_images": record["val_images"],
                         **{k: record["val"][k] for k in ("AP", "AP50")}, "elapsed_s": record.get("elapsed_s")})
    for i, row in enumerate(rows):  # the teacher evaluates after every epoch (eval_every: 1)
        row["epoch"] = i + 1
    return rows


def model_card(name: str, digest: str, size_mb: float, meta: dict[str, Any], metrics: dict[str, Any],
               curve: list[dict[str, Any]], command: str, machine: str) -> str:
    train = meta.get("train") or {}
    wall = curve[-1]["elapsed_s"] if curve else None
    images = (str(train["max_train_images"]) + " training images" if train.get("max_train_images")
              else "every training image")
    gains = [100 * (b["AP"] - a["AP"]) for a, b in zip(curve, curve[1:])]
    table = markdown_table(["epoch", "step", "val images", "AP", "AP50", "gain"],
                           [[r["epoch"], r["step"], r["val_images"], f"{100 * r['AP']:.2f}", f"{100 * r['AP50']:.2f}",
                             f"{g:+.2f}" if g is not None else ""] for r, g in zip(curve, [None, *gains])])
    final = " · ".join(f"{k} {100 * metrics[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    cfg = meta["config"]
    return "\n".join([
        f"# {name}: the embedded default's teacher", "",
        f"GFL detector, {cfg['backbone']} backbone (ImageNet init), FPN {cfg['fpn_channels']} channels, head "
        f"{cfg['head_convs']} x {cfg['head_channels']} channels, input {cfg['input_size'][1]} x "
        f"{cfg['input_size'][0]}; {len(meta['classes'])} classes (fashion-scenes, Fashion-MNIST's). Float16 state "
        f"dict, {size_mb:.1f} MB.", "",
        f"- SHA-256: `{digest}`",
        f"- Command: `{command}`",
        f"- Seed {train.get('seed')}, {train.get('epochs')} epochs ({meta.get('step')} steps of batch "
        f"{train.get('batch_size')}), {train.get('optimizer')} lr {train.get('lr')} {train.get('schedule')}, "
        f"weight decay {train.get('weight_decay')}, augmentation {train.get('augment')}, {images}",
        f"- Wall time: {wall / 60:.0f} min of training and evaluation" if wall else "- Wall time: not logged",
        f"- Machine: {machine}",
        f"- On all {metrics['num_images']} val images (COCO mAP, percent): {final}", "",
        "Validation AP after every epoch, on all val images:", "", table, "",
        "Preprocessing: RGB, ImageNet mean/std in 0..255, letterboxed (centred, padded at the mean), as "
        "`deploy/preprocess.py`. Load it with `teacher.checkpoint: weights/" + name + "` (the default pipeline does,"
        " and checks the SHA-256 above); `make teacher` trains one from scratch instead.", ""])


def ship(run_dir: Path, out: Path, command: str, note: str = "") -> dict[str, Any]:
    checkpoint, measured, log = run_dir / "last.pt", run_dir / metrics_file.NAME, run_dir / "log.jsonl"
    for f in (checkpoint, measured, log):
        if not f.is_file():
            raise InputError(f"{f} missing: the teacher run has not finished "
                             "(its final evaluation writes metrics.json)")
    metrics = metrics_file.measurement(metrics_file.read(measured))
    if "AP" not in metrics:
        raise InputError(f"{measured}: unreadable or without the checkpoint's measurement (rerun the teacher stage)")
    from distill.weights_file import write_weights  # torch: not for `edgekd ship-teacher --help`

    meta = write_weights(checkpoint, out)
    size_mb = out.stat().st_size / 2**20
    if size_mb > MAX_MB:
        out.unlink()  # nothing half-done stays beside the error
        raise InputError(f"{out}: {size_mb:.1f} MiB, over the {MAX_MB} MiB the repo takes under weights/")
    digest = sha256_file(out)
    card = model_card(out.name, digest, size_mb, meta, metrics, epoch_curve(log), command, machine_line(machine_info()))
    if note:
        card = card.replace("\n\nValidation AP after", f"\n- Note: {note}\n\nValidation AP after", 1)
    write_text(out.with_suffix(".md"), card)
    print(card)
    return {"sha256": digest, "size_mb": size_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekd ship-teacher", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="the teacher's run folder (last.pt, metrics.json, log.jsonl)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", required=True, help="the command that trained it, for the model card")
    parser.add_argument("--note", default="", help="a line for the model card (e.g. what else ran on the machine)")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may stand before options too
    return guarded(lambda: ship(args.run_dir, args.out, args.command, args.note))


if __name__ == "__main__":
    sys.exit(main())
