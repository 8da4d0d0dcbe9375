"""Markdown tables: the one helper every table of the project is written with."""

from __future__ import annotations

from typing import Any, Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numbers_right: bool = False) -> str:
    """A GitHub-flavoured markdown table; cells are written with str(). numbers_right aligns every column
    after the first to the right."""
    rule = "|---" + ("|---:" if numbers_right else "|---") * (len(header) - 1) + "|"
    return "\n".join([_row(header), rule, *map(_row, rows)])


def _row(cells: Sequence[Any]) -> str:
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"  # an empty cell is "| |"
