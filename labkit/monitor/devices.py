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
            utilization_perc=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,  # NVML says percent
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
        utilization_perc=psutil.cpu_percent(interval=None) / 100,
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


@dataclass(frozen=True)
class MemoryReading:
    """What the memory panel shows: GPU memory through NVML, or this process's RSS where there is no NVML."""

    kind: str  # "gpu" (NVML) or "cpu" (the fallback: process RSS and machine CPU utilisation)
    used_bytes: float | None
    total_bytes: float | None  # GPU: the devices' memory; CPU: the machine's RAM
    utilization_perc: float | None  # GPU utilisation, or machine CPU utilisation in the fallback (0 to 1)
    label: str  # says which it is, for a panel's title

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"


class DeviceProbe:
    """Reads device memory and utilisation for the monitor. NVML when present (all GPUs summed, utilisation
    averaged), else the clearly labelled CPU fallback. Never raises: a failing probe reads as unknown.

    Each probe keeps its own CPU-time baseline, so two probes (a scrape and a notebook panel) do not steal
    each other's utilisation interval (psutil.cpu_percent(None) is one process-wide baseline)."""

    def __init__(self):
        self._last_cpu = psutil.cpu_times()
        self._process = psutil.Process()

    def cpu_utilization_perc(self) -> float:
        """Machine CPU utilisation (0 to 1) since this probe's last call."""
        now = psutil.cpu_times()
        last, self._last_cpu = self._last_cpu, now
        busy = sum(now) - now.idle - getattr(now, "iowait", 0.0)
        busy_before = sum(last) - last.idle - getattr(last, "iowait", 0.0)
        total = sum(now) - sum(last)
        return max(0.0, min(1.0, (busy - busy_before) / total)) if total > 0 else 0.0

    def process_resident_bytes(self) -> int:
        return self._process.memory_info().rss

    def read(self) -> MemoryReading:
        try:
            gpus = gpu_readings()
        except Exception:  # a driver hiccup: fall back rather than fail
            gpus = []
        if gpus:
            return MemoryReading("gpu", float(sum(g.memory_used_bytes for g in gpus)),
                                 float(sum(g.memory_total_bytes for g in gpus)),
                                 sum(g.utilization_perc for g in gpus) / len(gpus),
                                 f"GPU memory (NVML, {len(gpus)} device{'s' if len(gpus) > 1 else ''})")
        try:
            rss = float(self.process_resident_bytes())
        except Exception:
            rss = None
        return MemoryReading("cpu", rss, float(psutil.virtual_memory().total), self.cpu_utilization_perc(),
                             "process RSS (no NVML here: CPU fallback)")
