"""edgekd's command line.

    python -m pipeline run --config configs/pipelines/default.yaml [--stages data] [key.sub=value ...]

Bad input (config, dataset, checkpoint) ends with one line naming the file and the field, exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import common_arguments, guarded
from pipeline.config import load_config, to_yaml
from pipeline.run import run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="edgekd: distil, export, quantize, measure.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline's stages")
    common_arguments(run)
    run.add_argument("--stages", help="comma-separated stages to run (default: the config's list)")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_config(args.config, args.overrides)
        print(f"# config: {args.config}" + (f" with {' '.join(args.overrides)}" if args.overrides else ""))
        print(to_yaml(cfg), flush=True)
        stages = args.stages.split(",") if args.stages else None
        run_pipeline(cfg, stages, progress=not args.no_progress and sys.stderr.isatty())

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
