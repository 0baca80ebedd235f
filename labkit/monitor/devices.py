"""Device probes: NVML for NVIDIA GPUs, and a clearly labelled CPU fallback where NVML is absent.

Probes never raise on a machine without a GPU: the fallback is a normal answer, not an error.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

import psutil


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    utilization_perc: float
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True)
class CpuReading:
    model: str
    physical_cores: int
    logical_cores: int
    memory_total_bytes: int
    process_resident_bytes: int
    utilization_perc: float


def nvml_available() -> bool:
    return _nvml() is not None


@lru_cache(maxsize=1)
def _nvml():
    """The initialised pynvml module, or None where there is no NVIDIA driver (the usual CPU case)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError: all mean "no NVML here"
        return None


def gpu_readings() -> list[GpuReading]:
    nvml = _nvml()
    if nvml is None:
        return []
    readings = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        readings.append(GpuReading(
            index=index,
            name=name.decode() if isinstance(name, bytes) else name,
            utilization_perc=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
        ))
    return readings


def cpu_reading() -> CpuReading:
    return CpuReading(
        model=cpu_model(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=os.cpu_count() or 1,
        memory_total_bytes=psutil.virtual_memory().total,
        process_resident_bytes=psutil.Process().memory_info().rss,
        utilization_perc=psutil.cpu_percent(interval=None),
    )


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
