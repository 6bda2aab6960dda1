"""What the numbers were measured on: devices, driver, library versions, CPU, threads, load."""
from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

__all__ = ["environment", "cuda_devices", "load_average"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    """NVIDIA driver version: nvidia-smi if present, else the CUDA driver API's version number."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"CUDA driver API {v.value // 1000}.{v.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    return None


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (how busy the host was: other processes skew timings)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cuda_devices() -> list[str]:
    """'cuda:<i>' for every CUDA device torch can use (none without torch)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def environment(devices: list[str]) -> dict[str, Any]:
    """A JSON-able record of the host, the libraries and the devices benchmarked."""
    import numpy as np

    import detkernels

    env: dict[str, Any] = {
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1_5_15": load_average(),
        "versions": {
            "detkernels": detkernels.__version__,
            "numpy": np.__version__,
            "torch": _version("torch"),
            "torchvision": _version("torchvision"),
            "numba": _version("numba"),
            "cupy": _version("cupy-cuda13x") or _version("cupy-cuda12x") or _version("cupy"),
        },
        "detkernels_build": detkernels.build_info(),
        "detkernels_backends": detkernels.available_backends(),
        "threads": {"detkernels": None, "torch": None,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "DETKERNELS_NUM_THREADS": os.environ.get("DETKERNELS_NUM_THREADS")},
        "devices": {},
    }
    try:
        env["threads"]["detkernels"] = detkernels.get_num_threads()
    except ImportError:
        pass
    if "torch" in sys.modules or _version("torch"):
        try:
            import torch

            env["threads"]["torch"] = torch.get_num_threads()
            env["torch_cuda"] = torch.version.cuda
        except ImportError:
            pass
    for dev in devices:
        if dev == "cpu":
            env["devices"][dev] = {"name": env["cpu"]}
            continue
        import torch

        p = torch.cuda.get_device_properties(torch.device(dev))
        env["devices"][dev] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_bytes": int(p.total_memory),
            "multiprocessors": int(p.multi_processor_count),
            "driver": _driver_version(),
        }
    return env
