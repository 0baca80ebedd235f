"""MONITOR: device probes (NVML or CPU fallback); events, statistics and exposition arrive with issue 5."""
from .devices import CpuReading, GpuReading, cpu_reading, gpu_readings, nvml_available

__all__ = ["CpuReading", "GpuReading", "cpu_reading", "gpu_readings", "nvml_available"]
