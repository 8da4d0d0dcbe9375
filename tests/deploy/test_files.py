"""Atomic writes: whole or absent, and with the mode open() would give under the umask; a cut log read back."""

import os

import pytest

from deploy.files import read_jsonl, write_json, write_text


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


def test_read_jsonl_skips_a_line_cut_by_a_kill_and_keeps_the_rest(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 10, "loss": 2.0}\n\n{"step": 20, "val": {"AP": 0.5}}\n[1, 2]\n{"step": 3')
    assert read_jsonl(log) == [{"step": 10, "loss": 2.0}, {"step": 20, "val": {"AP": 0.5}}]
    with pytest.raises(OSError):
        read_jsonl(tmp_path / "missing.jsonl")
