"""The one error type raised where bad input enters (config, dataset, checkpoint, artifact)."""


class InputError(ValueError):
    """Bad input; the message is one line naming the file and the field or setting at fault."""


class GateError(RuntimeError):
    """A stage's result broke a declared limit (parity, mAP drop): the message names the figure and the limit."""


class DeviceError(RuntimeError):
    """The device or its runtime failed a call (a CUDA or TensorRT call returned an error): the message
    names the file, the call and the code, so a failed launch never passes off old outputs as new."""


def report(error: Exception) -> int:
    """A deploy/ command's failure as one line on stderr and its exit code: 2 bad input, 4 a failed device call
    (the same codes as pipeline.cli.guarded)."""
    import sys

    prefix, code = ("device error", 4) if isinstance(error, DeviceError) else ("error", 2)
    print(f"{prefix}: {error}", file=sys.stderr)
    return code
