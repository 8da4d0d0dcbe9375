"""What this CPU lets oneDNN (inside OpenVINO) run, from /proc/cpuinfo and ONEDNN_MAX_CPU_ISA, so tests
expect the kernel families the machine offers instead of skipping on the machines they were not
written on (an AVX2-only EPYC one session, an AMX Xeon the next)."""

from __future__ import annotations

import os
import platform

from deploy.machine import cpu_model_and_isa, read_text

# ONEDNN_MAX_CPU_ISA values (oneDNN's cpu_isa names) -> the best family they leave.
_CAPS = [("AVX512_CORE_AMX", "amx"), ("AVX10", "amx"), ("AVX512", "avx512"), ("AVX2", "avx2"), ("AVX", "sse41"),
         ("SSE41", "sse41")]
_ORDER = ["sse41", "avx2", "avx512", "amx"]


def kernel_family() -> str:
    """'amx', 'avx512', 'avx2' or 'sse41' on x86 (the int8 convolution kernels' family), 'other' elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "other"
    _, isa = cpu_model_and_isa(read_text("/proc/cpuinfo"))
    best = "amx" if "AMX-INT8" in isa else "avx512" if "AVX-512" in isa else "avx2" if "AVX2" in isa else "sse41"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    for prefix, family in _CAPS:
        if cap.startswith(prefix):
            return min(best, family, key=_ORDER.index)
    return best


def float_kernel_family() -> str:
    """Float (f32) convolutions never run on AMX tiles: AVX-512 is the best there."""
    family = kernel_family()
    return "avx512" if family == "amx" else family
