"""Write docs/settings.md, the reference of every pipeline setting, from the config dataclasses themselves:
each key with its type, its default and the comment beside it in the code (a test keeps the file current).

    python -m pipeline.tools.settings_doc [--out docs/settings.md] [--check]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig

OUT = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
HEADER = ("# Settings\n\nEvery key a pipeline config takes (`configs/pipelines/default.yaml` sets the defaults of the "
          "embedded run), as `key.sub=value` overrides or in YAML. Generated from the config dataclasses by "
          "`python -m pipeline.tools.settings_doc`; a test fails when it is out of date.\n")


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field in the class's source: the one on its line, else the lines just above it."""
    lines, comments, above = inspect.getsource(cls).splitlines(), {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and not stripped.startswith(("def ", "class ", "@")):
            inline = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            comments[match.group(1)] = inline or " ".join(above)
        above = []
    return comments


def type_name(tp: Any) -> str:
    text = str(tp).replace("typing.", "")
    return re.sub(r"<class '(\w+)'>", r"\1", text).replace("NoneType", "None")


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return None if dataclasses.is_dataclass(value) else value
    return None


def section_rows(cls: type, prefix: str) -> list[tuple[str, list[list[str]]]]:
    """[(section name, rows)] for cls and, depth first, its nested sections."""
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if inner:
            nested.append((f"{prefix}{f.name}", inner[0]))
            continue
        default = default_of(f)
        rows.append([f"`{prefix}{f.name}`", f"`{type_name(tp)}`", f"`{default!r}`", comments.get(f.name, "")])
    out = [(prefix.rstrip(".") or "top level", rows)] if rows else []
    for name, inner_cls in nested:
        out += section_rows(inner_cls, f"{name}.")
    return out


def render() -> str:
    parts = [HEADER]
    for section, rows in section_rows(PipelineConfig, ""):
        parts.append(f"\n## {section}\n\n| key | type | default | what |\n|---|---|---|---|\n")
        parts += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |\n" for row in rows]
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.settings_doc", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the code")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = Path(args.out).read_text(encoding="utf-8") if Path(args.out).is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: python -m pipeline.tools.settings_doc", file=sys.stderr)
            return 1
        return 0
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
