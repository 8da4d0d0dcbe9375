"""Numbered progress lines for a stage that builds several artifacts one after another (export, quantize):
which one it is on, out of how many, and how long the stage has run, so a user sees it move."""

from __future__ import annotations

import time
from collections.abc import Callable


def step_printer(stage: str, planned: list[str]) -> Callable[[str], None]:
    """A function that prints `[stage] (i/N) name (t s in)` for each planned step it is called with."""
    start = time.perf_counter()

    def step(name: str) -> None:
        position = f"{planned.index(name) + 1}/{len(planned)}" if name in planned else f"-/{len(planned)}"
        print(f"[{stage}] ({position}) {name} ({time.perf_counter() - start:.0f} s in)", flush=True)

    return step
