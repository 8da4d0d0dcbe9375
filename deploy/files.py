"""Artifact files: atomic writes (an artifact appears under its final name complete, or not at all), hashes, and
reading back a JSON-lines log that a kill may have cut mid-line."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

from deploy.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    """The process's umask (read by setting it, so set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; an artifact gets the mode open() would give it
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: PathLike, data: Any, indent: int = 2) -> None:
    """Write JSON atomically (NaN is refused: it is not JSON)."""
    write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (a trainer's log.jsonl), skipping any line that does not parse: a kill cuts
    the line being written, and the lines before it are still whole. OSError if the file cannot be read."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (recorded in artifacts to tie them to their source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(directory: PathLike) -> Path:
    """Create `directory` if needed and make sure files can be written there; one clear error if not."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"output directory {directory} cannot be created ({e.strerror})") from e
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"output directory {directory} is not writable")
    return directory
