"""tegrastats lines -> power and load samples, for Jetson Orin, Xavier and Nano/TX formats.

A line holds rails as `NAME cur/avg` in mW, with an `mW` suffix since JetPack 5 (`VDD_IN 5153mW/5087mW`)
and without it before (`POM_5V_IN 2830/1483`). The board's total input is one rail where the board has
one; otherwise (AGX Xavier, AGX Orin) the module rails are summed. AGX Orin's VDDQ_VDD2_1V8AO is fed
from VIN_SYS_5V0, so it is left out of the sum rather than counted twice.
"""

from __future__ import annotations

import re

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # Orin NX / Orin Nano / Xavier NX; Nano / TX1 / TX2
RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
GPU_LOAD = re.compile(r"GR3D_FREQ (\d+)%")
EMC_LOAD = re.compile(r"EMC_FREQ (\d+)%")
NOT_RAILS = {"RAM", "SWAP", "IRAM"}  # `RAM 1446/3957MB` has the same shape
SUB_RAILS = {"VDDQ_VDD2_1V8AO"}  # already inside another rail


def parse_line(line: str) -> dict[str, float] | None:
    """One tegrastats line -> {'power_w', 'gpu_load', 'emc_load'} (None when it holds no rail)."""
    rails = {name: float(cur) for name, cur, _ in RAIL.findall(line) if name not in NOT_RAILS}
    if not rails:
        return None
    total = next((rails[r] for r in TOTAL_RAILS if r in rails), None)
    if total is None:
        total = sum(v for name, v in rails.items() if name not in SUB_RAILS)
    sample: dict[str, float] = {"power_w": total / 1000.0}
    gpu, emc = GPU_LOAD.search(line), EMC_LOAD.search(line)
    if gpu:
        sample["gpu_load"] = float(gpu.group(1))
    if emc:
        sample["emc_load"] = float(emc.group(1))
    return sample


def summarize(samples: list[dict[str, float]], images: int, seconds: float) -> dict[str, float]:
    """Mean and peak watts over the samples, and energy per image in mJ (mean power x time / images)."""
    watts = [s["power_w"] for s in samples]
    if not watts:
        return {}
    mean = sum(watts) / len(watts)
    out = {"mean_w": round(mean, 3), "peak_w": round(max(watts), 3), "samples": len(watts),
           "energy_per_image_mj": round(mean * seconds / max(images, 1) * 1000.0, 3)}
    for key in ("gpu_load", "emc_load"):
        values = [s[key] for s in samples if key in s]
        if values:
            out[f"{key}_mean"] = round(sum(values) / len(values), 1)
    return out
