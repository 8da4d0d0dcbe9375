"""deploy/ ships alone to a device: no torch, and Python 3.8 syntax."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

DEPLOY_FILES = sorted((REPO / "deploy").rglob("*.py"))


def test_deploy_never_imports_torch():
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in DEPLOY_FILES]
    # torch made unimportable: an import of it anywhere under deploy/ fails the run outright
    code = ("import sys\nsys.modules['torch'] = None\nsys.modules['torchvision'] = None\n"
            f"for m in {modules!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('distill', 'export', 'pipeline')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_deploy_parses_as_python_38(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


def _python38():
    pyenv = os.path.expanduser("~/.pyenv/versions")  # pyenv's shims exit 127 unless a version is selected
    if os.path.isdir(pyenv):
        for name in sorted(os.listdir(pyenv)):
            candidate = os.path.join(pyenv, name, "bin", "python3.8")
            if name.startswith("3.8.") and os.path.exists(candidate):
                return candidate
    found = shutil.which("python3.8")
    if found and subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
        return found
    return None


@pytest.mark.skipif(_python38() is None, reason="no Python 3.8 interpreter on this machine")
def test_deploy_compiles_under_a_real_python_38():
    # compile() only: syntax and grammar of 3.8; nothing is written.
    code = "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')"
    proc = subprocess.run([_python38(), "-c", code, *map(str, DEPLOY_FILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
