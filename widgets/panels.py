"""Live panels: each is a plotly `FigureWidget` that appends one point per trace for each `Snapshot`.

Views only: a panel draws what `labkit.monitor` computed (it never computes a statistic). The rolling
history is bounded (`history` points), so a dashboard left open all day stays small.
"""
from __future__ import annotations

from datetime import datetime

import plotly.graph_objects as go

from labkit.monitor import Snapshot

HISTORY = 300  # points per trace: five minutes at one refresh a second


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


class Panel:
    """A figure with named line traces over wall-clock time."""

    title = ""
    yaxis = ""
    traces: tuple[str, ...] = ()

    def __init__(self, history: int = HISTORY, height: int = 260, width: int = 540):
        self.history = history
        self.figure = go.FigureWidget(
            data=[go.Scatter(x=[], y=[], mode="lines+markers", name=name, marker={"size": 4}) for name in self.traces],
            layout=go.Layout(title={"text": self.title, "font": {"size": 14}}, height=height, width=width,
                             margin={"l": 50, "r": 50, "t": 40, "b": 30},
                             yaxis={"title": self.yaxis, "rangemode": "tozero"},  # a change is read against zero
                             xaxis={"tickformat": "%H:%M:%S"},  # a live view: the time of day, not the date
                             legend={"orientation": "h", "y": -0.2}, template="plotly_white"))

    def values(self, snapshot: Snapshot) -> tuple[float | None, ...]:
        raise NotImplementedError

    def draw(self, snapshot: Snapshot) -> None:
        when = datetime.fromtimestamp(snapshot.t)
        with self.figure.batch_update():
            for trace, value in zip(self.figure.data, self.values(snapshot)):
                trace.x = (*trace.x, when)[-self.history:]
                trace.y = (*trace.y, value)[-self.history:]


class LatencyPanel(Panel):
    """End-to-end latency (mean and p99) and time to first token (p50 and p99), in milliseconds. A window of
    fewer than 100 requests has no p99 but its slowest: the legend then says "max" (`Summary.name`)."""

    title = "Latency (ms)"
    yaxis = "ms"
    traces = ("e2e mean", "e2e p99", "TTFT p50", "TTFT p99")

    def values(self, s: Snapshot):
        for trace, label, summary in ((self.figure.data[1], "e2e", s.latency), (self.figure.data[3], "TTFT", s.ttft)):
            name = f"{label} {summary.name(0.99)}"
            if summary.count and trace.name != name:  # an empty window keeps the last name: it has no point
                trace.name = name
        return _ms(s.latency.mean), _ms(s.latency.p99), _ms(s.ttft.p50), _ms(s.ttft.p99)


class ThroughputPanel(Panel):
    """Output tokens per second (requests per second are in the goodput panel, on an axis of their own)."""

    title = "Throughput (tokens/s)"
    yaxis = "tokens/s"
    traces = ("tokens/s",)

    def values(self, s: Snapshot):
        return (s.tokens_per_s,)


class QueuePanel(Panel):
    """Requests running and waiting, and the KV cache's fill in percent (right axis)."""

    title = "Queue and KV cache"
    yaxis = "requests"
    traces = ("running", "waiting", "KV used %")

    def __init__(self, history: int = HISTORY, height: int = 260):
        super().__init__(history, height)
        self.figure.data[2].yaxis = "y2"
        # From zero up to what the traffic used (a 135M model's batch may fill 1% of the pool): flat on 0-100
        # it would say nothing.
        self.figure.layout.yaxis2 = {"title": "KV %", "overlaying": "y", "side": "right", "rangemode": "tozero",
                                     "ticksuffix": "%", "showgrid": False}

    def values(self, s: Snapshot):
        return s.running, s.waiting, None if s.kv_usage is None else 100.0 * s.kv_usage


class MemoryPanel(Panel):
    """GPU memory used and total (NVML), or, without NVML, the process's resident memory: the title says
    which, so a CPU figure is never mistaken for VRAM."""

    title = "Memory"
    yaxis = "GiB"
    traces = ("used", "total")

    def values(self, s: Snapshot):
        memory = s.memory
        if memory is None:
            return None, None
        title = f"Memory: {memory.label}"
        if self.figure.layout.title.text != title:
            self.figure.layout.title.text = title
        total = memory.total_bytes if memory.is_gpu else None  # machine RAM would dwarf a process's RSS
        if self.figure.data[1].showlegend is not memory.is_gpu:  # no empty "total" entry on a CPU
            self.figure.data[1].showlegend = memory.is_gpu
        return (None if memory.used_bytes is None else memory.used_bytes / 2**30,
                None if total is None else total / 2**30)


class GoodputPanel(Panel):
    """Finished requests per second, those that met every SLO, and those that missed, by the phase that broke
    them (queue, prefill, decode): when load passes the knee, throughput still rises while goodput falls."""

    title = "Requests and goodput (req/s)"
    yaxis = "requests/s"
    traces = ("finished", "within SLO", "missed in queue", "missed in prefill", "missed in decode")

    def values(self, s: Snapshot):
        g = s.goodput
        if g.requests_per_s is None or not s.window_s:
            return s.requests_per_s, None, None, None, None
        return (s.requests_per_s, g.requests_per_s,
                *(g.missed[phase] / s.window_s for phase in ("queue", "prefill", "decode")))
