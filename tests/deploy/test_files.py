"""Atomic writes: whole or absent, and with the mode open() would give under the umask."""

import os

import pytest

from deploy.files import write_json, write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomic_write_gets_the_umask_mode_not_mkstemp_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "report.html", "<html>")
        write_json(tmp_path / "metrics.json", {"AP": 0.5})
    finally:
        os.umask(old)
    for name in ("report.html", "metrics.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.html"]  # no temporary left
