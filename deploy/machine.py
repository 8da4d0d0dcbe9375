"""What a figure was measured on: the CPU and the instruction-set extensions the runtimes choose their
kernels by, threads, Python and runtime versions; on a Jetson its model, L4T release, power mode and
clocks. Torch-free (copied to the device with the rest of deploy/)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

# /proc/cpuinfo flags that decide which int8 / bf16 / fp16 kernels oneDNN, OpenVINO and MLAS pick.
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "avx512_bf16": "AVX512-BF16", "avx512_fp16": "AVX512-FP16", "amx_int8": "AMX-INT8",
             "amx_bf16": "AMX-BF16", "amx_fp16": "AMX-FP16", "asimddp": "NEON-dotprod", "sve": "SVE"}
RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",),
                    "tensorrt": ("tensorrt", "pycuda", "cuda-python")}


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return None


def run_quiet(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cpu_model_and_isa(cpuinfo: str | None) -> tuple[str, list[str]]:
    """(CPU model name, the ISA extensions of ISA_FLAGS it reports) from /proc/cpuinfo's text."""
    model, flags = platform.processor() or platform.machine(), set()
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model in (platform.processor(), platform.machine()):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, [name for flag, name in ISA_FLAGS.items() if flag in flags]


def openvino_capabilities() -> dict | None:
    """The CPU plugin's own view (OPTIMIZATION_CAPABILITIES, device name), where OpenVINO is installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    return {"device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "optimization_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}


def machine_info() -> dict:
    """The machine a benchmark or a report was measured on."""
    cpu, isa = cpu_model_and_isa(read_text("/proc/cpuinfo"))
    info = {"platform": platform.platform(), "cpu": cpu, "isa": isa, "cpu_threads": os.cpu_count(),
            "python": platform.python_version(),
            "runtimes": {p: v for ps in RUNTIME_PACKAGES.values() for p in ps if (v := package_version(p))}}
    numpy_version = package_version("numpy")
    if numpy_version:
        info["numpy"] = numpy_version
    ov_caps = openvino_capabilities()
    if ov_caps:
        info["openvino_cpu"] = ov_caps
    gpus = run_quiet(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"])
    if gpus:
        info["gpus"] = gpus.splitlines()
    model = read_text("/proc/device-tree/model")
    if model and ("jetson" in model.lower() or os.path.exists("/etc/nv_tegra_release")):
        info["jetson"] = {"model": model, "l4t": (read_text("/etc/nv_tegra_release") or "").splitlines()[0:1],
                          "nvpmodel": run_quiet(["nvpmodel", "-q"]),
                          "jetson_clocks_show": run_quiet(["jetson_clocks", "--show"]),
                          "dla_cores": len([d for d in os.listdir("/dev") if d.startswith("nvhost-ctrl-nvdla")])
                          if os.path.isdir("/dev") else 0}
    return info


def machine_line(info: dict) -> str:
    """One line naming the machine: CPU, ISA, threads (and the Jetson board, or the GPUs)."""
    parts = [f"{info['cpu']} ({', '.join(info.get('isa') or ['no AVX2'])}; {info['cpu_threads']} threads)"]
    if info.get("jetson"):
        parts.append(info["jetson"]["model"])
    elif info.get("gpus"):
        parts.append("; ".join(info["gpus"]))
    return ", ".join(parts)
