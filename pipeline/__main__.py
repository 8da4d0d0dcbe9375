"""edgekd's command line: `edgekd <command>` (or `python -m pipeline <command>`).

    edgekd run --config configs/pipelines/default.yaml [--stages a,b | --from stage] [key.sub=value ...]
    edgekd status --config configs/pipelines/default.yaml [key.sub=value ...]
    edgekd train --role teacher|student | distill | export | quantize | qat | engines | benchmark   one stage alone
    edgekd ablation | qat-ablation | ablation-heads | detection-errors | diagnose-bckd | bench-train
           | bench-openvino | bench-nms | ship-teacher | convert-mmdet

`run` skips every stage whose settings and inputs are unchanged since it finished, resumes an
interrupted one and reruns the rest; `--from stage` reruns that stage and every one after it.
`status` lists each stage as done, stale (settings or inputs changed), failed or pending.
Bad input (config, dataset, checkpoint) ends with one line naming the file and the field, exit 2;
a failed gate names the stage, the figure and the limit, exit 3; `--debug` shows the traceback instead.
Every other command is its module's own command line (`edgekd quantize --help`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.cli import common_arguments, guarded
from pipeline.config import load_config, to_yaml
from pipeline.run import format_status, pipeline_status, run_pipeline
from pipeline.stage_table import commands

# edgekd <tool> -> the module whose main(argv) takes the rest of the line, beside each stage's own command
# (pipeline/stage_table.py). Imported only when called, so `edgekd status` does not load training code.
TOOLS = {
    "qat-ablation": "pipeline.tools.qat_ablation",
    "ablation": "pipeline.tools.ablation",
    "ablation-heads": "pipeline.tools.ablation_heads",
    "detection-errors": "pipeline.tools.detection_errors",
    "diagnose-bckd": "pipeline.tools.diagnose_bckd",
    "bench-train": "pipeline.tools.bench_train",
    "bench-openvino": "pipeline.tools.bench_openvino",
    "bench-nms": "pipeline.tools.bench_nms",
    "ship-teacher": "pipeline.tools.ship_teacher",
    "convert-mmdet": "pipeline.tools.convert_mmdet",
}


def all_commands() -> dict[str, str]:
    return {**commands(), **TOOLS}


def command_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (usage and --help) and the parsers of `run` and `status`."""
    parser = argparse.ArgumentParser(prog="edgekd", description="edgekd: distil, export, quantize, measure.",
                                     epilog="one stage or tool alone: " + ", ".join(all_commands())
                                     + " (each with --help)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,status," + ",".join(all_commands()) + "}")
    run = common_arguments(sub.add_parser("run", help="run the pipeline's stages"))
    chosen = run.add_mutually_exclusive_group()
    chosen.add_argument("--stages", help="comma-separated stages to run (default: the config's list)")
    chosen.add_argument("--from", dest="start", metavar="STAGE", help="rerun this stage and every stage after it")
    run.add_argument("--quiet-config", action="store_true", help="do not print the resolved config")
    status = common_arguments(sub.add_parser("status", help="list each stage as done, stale, failed or pending"))
    return parser, {"run": run, "status": status}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in all_commands():
        return importlib.import_module(all_commands()[argv[0]]).main(argv[1:])
    parser, commands = command_parsers()
    if not argv or argv[0] not in commands:
        parser.parse_args(argv)  # prints the usage (or the help) and exits
    # Overrides (key=value) may stand before the options: argparse's subparsers cannot intermix them
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        if args.command == "status":
            print(f"# {cfg.run_dir}")
            print(format_status(pipeline_status(cfg)))
            return
        print(f"# config: {args.config}" + (f" with {' '.join(args.overrides)}" if args.overrides else ""))
        if not args.quiet_config:
            print(to_yaml(cfg), flush=True)
        stages = args.stages.split(",") if args.stages else None
        run_pipeline(cfg, stages, progress=not args.no_progress and sys.stderr.isatty(), start=args.start)

    return guarded(body, args.debug, "interrupted: rerun the same command to continue where it stopped")


if __name__ == "__main__":
    sys.exit(main())
