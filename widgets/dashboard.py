"""`Dashboard(source)`: the four panels, a one-line summary and start/stop buttons, refreshed about once a
second by a background thread (the kernel stays free; `stop()` ends the thread before it returns).

    from widgets import Dashboard
    dash = Dashboard(server)          # a labkit.serve handle, an LLM, a URL, or a labkit.monitor source
    dash                              # shows it; it starts refreshing at once (start=False to wait)
                                      # statistics over the last window_s=10 s: short, so the panels react fast
    dash.stop()
    dash.snapshot()                   # the panels now, as a plain figure: what a saved notebook keeps
"""
from __future__ import annotations

import html
from datetime import datetime

import ipywidgets as w
import plotly.graph_objects as go

from labkit import monitor

from labkit.monitor.slo import SLO

from .panels import HISTORY, GoodputPanel, LatencyPanel, MemoryPanel, QueuePanel, ThroughputPanel
from .snapshot import figure_of


def _fmt(value, scale: float = 1.0, unit: str = "", digits: int = 0) -> str:
    return "–" if value is None else f"{value * scale:,.{digits}f}{unit}"


class Dashboard(w.VBox):
    def __init__(self, source, interval_s: float = 1.0, window_s: float = 10.0, history: int = HISTORY,
                 start: bool = True):
        self._owns_source = not callable(getattr(source, "read", None))  # one it built: closed with it
        self.source = monitor.source(source, window_s=window_s)
        self.latency, self.throughput = LatencyPanel(history), ThroughputPanel(history)
        self.queue, self.memory = QueuePanel(history), MemoryPanel(history)
        self.goodput = GoodputPanel(history)
        self.panels = (self.latency, self.throughput, self.queue, self.memory, self.goodput)
        self.slo_sliders = self._slo_sliders()
        self.summary = w.HTML("<i>not started</i>")
        self.start_button = w.Button(description="Start", icon="play", button_style="success")
        self.stop_button = w.Button(description="Stop", icon="stop")
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.last: monitor.Snapshot | None = None
        self._watcher = monitor.Watcher(self.source, self.draw, interval_s, on_error=self._show_error)
        super().__init__([
            w.HBox([self.start_button, self.stop_button, self.summary]),
            w.HBox([self.latency.figure, self.throughput.figure]),
            w.HBox([self.queue.figure, self.memory.figure]),
            w.HBox([self.goodput.figure, w.VBox([w.HTML("<b>SLOs</b> (0: off)"), *self.slo_sliders.values(),
                                                 self.slo_note])]),
        ])
        self._buttons()
        if start:
            self.start()

    # ---- controls ----
    @property
    def running(self) -> bool:
        return self._watcher.running

    def start(self) -> Dashboard:
        self._watcher.start()
        self._buttons()
        return self

    def stop(self) -> None:
        """Stop refreshing; the thread has ended when this returns. `start()` resumes."""
        self._watcher.stop()
        self._buttons()

    def close(self) -> None:
        self.stop()
        if self._owns_source:
            self.source.close()
        super().close()

    def refresh(self) -> monitor.Snapshot | None:
        """One read and redraw now, on the caller's thread."""
        return self._watcher.tick()

    # ---- drawing ----
    def draw(self, snapshot: monitor.Snapshot) -> None:
        self.last = snapshot
        for panel in self.panels:
            panel.draw(snapshot)
        s = snapshot
        self.summary.value = (
            f"<b>{html.escape(s.source)}</b> · last {s.window_s:.0f} s: {_fmt(s.requests_per_s, digits=2)} req/s, "
            f"{_fmt(s.tokens_per_s, digits=1)} tok/s, e2e {s.latency.name(0.99)} {_fmt(s.latency.p99, 1000, ' ms')}, "
            f"TTFT {s.ttft.name(0.99)} {_fmt(s.ttft.p99, 1000, ' ms')}, batch {_fmt(s.batch_size, digits=1)} · now "
            f"{_fmt(s.running)} running, {_fmt(s.waiting)} waiting, KV {_fmt(s.kv_usage, 100, '%')}"
            + (f", {_fmt(s.replicas)} replicas" if s.replicas is not None else "")
            + f" · goodput {_fmt(s.goodput.fraction, 100, '%')} of {s.goodput.judged:.0f} judged"
            + f" · {s.requests_total} requests in all")

    def snapshot(self) -> go.Figure:
        """The panels as they are now, as one plain plotly Figure. A saved notebook keeps no live widget (nor
        does its HTML render): show this at the end of a run to keep what the dashboard showed."""
        s = self.last
        title = "dashboard: nothing read yet" if s is None else \
            f"{s.source} · dashboard at {datetime.fromtimestamp(s.t):%H:%M:%S}"
        return figure_of(((self.latency, self.throughput), (self.queue, self.memory), (self.goodput,)), title)

    def __repr__(self) -> str:
        # The text a saved notebook shows where the widget cannot be drawn (nbconvert's HTML, a code host).
        return "Dashboard: live panels, drawn only while a kernel runs; its snapshot() keeps them as a figure"

    # ---- SLOs ----
    def _slo_sliders(self) -> dict[str, w.IntSlider]:
        """One slider per SLO, starting at the source's own. Moving one re-judges the recent window at once,
        where the source keeps each request's timings (in-process); a remote server's goodput comes from its
        counters, judged against its own --slo flags, so there the sliders are shown disabled."""
        slo = getattr(self.source, "slo", None)
        adjustable = slo is not None
        slo = slo or SLO()
        self.slo_note = w.HTML("" if adjustable else "<small>judged by the server against its --slo flags</small>")
        sliders = {}
        for field, label, most in (("ttft_ms", "TTFT ms", 5000), ("itl_ms", "ITL ms", 1000), ("e2e_ms", "e2e ms", 30000)):
            value = getattr(slo, field)
            sliders[field] = w.IntSlider(value=int(value or 0), min=0, max=max(most, int(value or 0)),
                                         step=10, description=label, continuous_update=False, disabled=not adjustable)
            sliders[field].observe(lambda _: self._rejudge(), names="value")
        return sliders

    def _rejudge(self) -> None:
        self.source.slo = SLO(**{field: (slider.value or None) for field, slider in self.slo_sliders.items()})
        if self.last is not None:
            self.refresh()

    def _show_error(self, error: Exception) -> None:
        self.summary.value = f"<span style='color:#b00'>cannot read the source: {html.escape(str(error))}</span>"

    def _buttons(self) -> None:
        running = self.running
        self.start_button.disabled, self.stop_button.disabled = running, not running
        # The enabled button is the one to press: only it wears a colour.
        self.start_button.button_style = "" if running else "success"
        self.stop_button.button_style = "warning" if running else ""
