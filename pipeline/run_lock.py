"""One edgekd process at a time on a run folder: an exclusive lock on <run>/.lock.

Two runs on one folder would resume each other's live training and set aside a folder another process
still writes into. The lock is the kernel's (fcntl.flock on an open file), so it goes with the process
however it ends: a crash or a kill leaves no stale lock to clear. Reading (`edgekd status`) takes none.
Under torchrun only the first process takes it, for all of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import InputError

_held: dict[Path, int] = {}  # run folders this process holds: a stage called from `run` is already covered


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str = "edgekd") -> Iterator[None]:
    """Hold <run_dir>/.lock while the body runs; another process holding it is one line naming its PID."""
    key = Path(run_dir).resolve()
    if key in _held or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    try:
        key.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"runs_dir: the run folder {run_dir} cannot be created ({e.strerror})") from e
    try:
        fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a folder this process may not write (a read-only mount): it cannot change it either
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InputError(f"{run_dir}: in use by another edgekd process (PID {holder}); wait for it to finish, or "
                         "give this one another folder (run=NAME)") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} ({command})\n".encode(), 0)
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # closing the file releases the lock
