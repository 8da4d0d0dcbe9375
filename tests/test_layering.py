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


PACKAGES = ("deploy", "distill", "export", "pipeline")


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}, lazy (in-function) imports included, from the source's AST."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] + [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                and node.module and node.level == 0 else [])
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_the_import_graph_has_no_circle_and_deploy_imports_no_other_package():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("deploy"):
            assert all(d.startswith("deploy") for d in deps), (name, deps)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for dep in graph[node]:
            visit(dep, path + [node])
        done.add(node)

    for name in graph:
        visit(name, [])
