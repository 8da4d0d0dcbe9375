"""What every edgekd command does around its work: bad input or a stopped run ends with one line and
exit code 2 (the traceback only with --debug), Ctrl-C says how to continue, DDP is torn down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from deploy.errors import DeviceError, GateError, InputError
from distill.settings import NonFiniteLoss


def guarded(body: Callable[[], None], debug: bool = False,
            on_interrupt: str = "interrupted: rerun the same command to continue") -> int:
    """Run body(); map failures to exit codes: 2 for bad input, a non-finite loss or a file system error,
    3 for a failed gate, 4 for a failed device call, 130 for Ctrl-C."""
    try:
        body()
    except (InputError, NonFiniteLoss) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file system that refuses (read-only, full, a file where a folder should be)
        if debug:
            raise
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
        print(f"error: {where + ': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except DeviceError as e:  # a CUDA or TensorRT call failed on the device
        if debug:
            raise
        print(f"device error: {e}", file=sys.stderr)
        return 4
    except GateError as e:  # the artifacts stay for inspection
        if debug:
            raise
        print(f"gate failed: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(on_interrupt, file=sys.stderr)
        return 130
    finally:
        dist = sys.modules.get("torch.distributed")  # never imported (status, --help): nothing to tear down
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--config, --no-progress, --debug and the key.sub=value overrides every command takes."""
    parser.add_argument("--config", default="configs/pipelines/default.yaml", help="pipeline YAML")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on bad input")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser
