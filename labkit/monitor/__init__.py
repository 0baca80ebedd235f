"""MONITOR: an event bus the engine, server, router and autoscaler publish to; rolling-window statistics;
the Prometheus exposition of /metrics; NVML probes with a CPU fallback; sources that read all of it
in-process or from any server's /metrics.

    source = labkit.monitor.source(server)        # or an LLM, or "http://127.0.0.1:8000"
    snap = source.read()                          # Snapshot: latency/ttft/itl/queue summaries, req/s, tok/s, ...
"""
from .devices import CpuReading, DeviceProbe, GpuReading, MemoryReading, cpu_reading, gpu_readings, nvml_available
from .events import EventBus, QueueDepth, ReplicaCount, RequestFinished, ScaleDecision, StepStats
from .metrics import ServingMetrics
from .sources import LocalSource, RemoteSource, Source, Watcher, source
from .console import format_snapshot
from .stats import RollingStats, Snapshot, Summary

__all__ = ["CpuReading", "DeviceProbe", "EventBus", "GpuReading", "LocalSource", "MemoryReading", "QueueDepth",
           "RemoteSource", "ReplicaCount", "RequestFinished", "RollingStats", "ScaleDecision", "ServingMetrics",
           "Snapshot", "Source", "StepStats", "Summary", "Watcher", "cpu_reading", "format_snapshot", "gpu_readings", "nvml_available",
           "source"]
