"""What a saved notebook keeps of the live widgets: Dashboard.snapshot() as a plain figure, and the switch that puts
an image beside every figure (drawing the image itself needs Chromium: tests/e2e/test_static_figures.py)."""
from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from labkit.monitor import EventBus, MemoryReading, Snapshot, Summary
from widgets import Dashboard, static_images

pytestmark = pytest.mark.unit

CPU = MemoryReading("cpu", 2**30, 2**35, 5.0, "process RSS (no NVML here: CPU fallback)")


def _drawn_dashboard(points: int = 3) -> Dashboard:
    dash = Dashboard(EventBus(), start=False)
    for i in range(points):
        dash.draw(Snapshot(t=1_700_000_000.0 + i, window_s=10, requests_per_s=2.0, tokens_per_s=100.0 + i,
                           latency=Summary(4, 0.5, 0.4, 0.6, 0.9), ttft=Summary(4, 0.1, 0.1, 0.1, 0.2), running=2,
                           waiting=i, kv_usage=0.01 * (i + 1), memory=CPU, source="in-process", requests_total=4 * i))
    return dash


def test_snapshot_is_a_plain_figure_of_every_panel_as_drawn():
    dash = _drawn_dashboard()
    figure = dash.snapshot()
    dash.close()
    assert type(figure) is go.Figure  # not a widget: it saves, and carries an image when static_images() is on
    assert [a.text for a in figure.layout.annotations] == [p.figure.layout.title.text for p in dash.panels[:2]] + [
        dash.queue.figure.layout.title.text, "Memory: process RSS (no NVML here: CPU fallback)",
        dash.goodput.figure.layout.title.text]
    live = [trace for panel in (dash.latency, dash.throughput, dash.queue, dash.memory, dash.goodput)
            for trace in panel.figure.data]
    assert [t.name for t in figure.data] == [t.name for t in live]
    assert all(s.y == t.y and s.x == t.x for s, t in zip(figure.data, live))
    assert figure.data[4].y == (100.0, 101.0, 102.0)  # tokens/s, as drawn
    total = next(t for t in figure.data if t.name == "total")
    assert total.showlegend is False  # no empty "total" entry on a CPU, as live


def test_snapshot_keeps_units_zero_based_axes_times_of_day_and_a_legend_per_panel():
    dash = _drawn_dashboard()
    figure = dash.snapshot()
    dash.close()
    layout = figure.to_dict()["layout"]
    y_axes = [axis for name, axis in layout.items() if name.startswith("yaxis")]
    assert sorted(axis["title"]["text"] for axis in y_axes) == sorted(
        ["ms", "tokens/s", "requests", "KV %", "GiB", "requests/s"])
    assert all(axis["rangemode"] == "tozero" for axis in y_axes)
    x_axes = [axis for name, axis in layout.items() if name.startswith("xaxis")]
    assert len(x_axes) == 5 and all(axis["tickformat"] == "%H:%M:%S" for axis in x_axes)
    kv = next(t for t in figure.data if t.name == "KV used %")
    running = next(t for t in figure.data if t.name == "running")
    assert kv.yaxis != running.yaxis and kv.xaxis == running.xaxis  # its own right axis in the queue panel
    assert layout["yaxis" + kv.yaxis[1:]]["ticksuffix"] == "%"
    assert len({t.legend for t in figure.data}) == 5  # one legend per panel, beneath it
    queue_colours = [t.line.color for t in figure.data if t.xaxis == running.xaxis]
    assert queue_colours[0] == figure.data[0].line.color  # each panel starts its colours afresh, as live
    assert figure.layout.title.text.startswith("in-process · dashboard at ")


def test_snapshot_is_a_copy_and_says_when_nothing_was_read():
    dash = Dashboard(EventBus(), start=False)
    empty = dash.snapshot()
    assert empty.layout.title.text == "dashboard: nothing read yet" and all(len(t.x) == 0 for t in empty.data)
    dash.draw(Snapshot(t=1_700_000_000.0, window_s=1, tokens_per_s=5.0))
    assert all(len(t.x) == 0 for t in empty.data)  # the panels moved on; the snapshot did not
    dash.close()


def test_a_saved_dashboard_says_what_it_was_where_it_cannot_be_drawn():
    dash = Dashboard(EventBus(), start=False)
    bundle = dash._repr_mimebundle_()
    dash.close()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("Dashboard: live panels") and "snapshot()" in bundle["text/plain"]


@pytest.fixture
def plotly_defaults():
    default, headers = pio.renderers.default, pio.defaults.headers
    yield
    pio.renderers.default, pio.defaults.headers = default, headers


def test_static_images_adds_an_image_renderer_to_the_interactive_one(plotly_defaults):
    static_images(scale=2)
    assert pio.renderers.default == "plotly_mimetype+labkit_png" and pio.renderers["labkit_png"].scale == 2
    static_images("svg")
    assert pio.renderers.default == "plotly_mimetype+labkit_svg"
    with pytest.raises(ValueError, match="fmt must be one of png, svg, not 'jpg'"):
        static_images("jpg")
