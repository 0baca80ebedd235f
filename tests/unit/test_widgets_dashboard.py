"""The live panels, checked through their widget state (figure data), not pixels."""
from __future__ import annotations

import threading

import pytest

import labkit
from labkit import LLM, SamplingParams
from labkit.monitor import MemoryReading, Snapshot, Summary
from widgets import Dashboard, LatencyPanel, MemoryPanel

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    return labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)


def test_figure_data_grows_after_traffic(tiny):
    with LLM(tiny) as llm:
        dash = Dashboard(llm, start=False)
        assert not dash.running and dash.stop_button.disabled
        dash.refresh()
        llm.generate(["a", "b", "c"], SamplingParams(max_tokens=6, ignore_eos=True))
        dash.refresh()
        dash.close()
        assert not llm.bus.has_subscribers  # the source it built is closed with it
        mine = labkit.monitor.source(llm)
        Dashboard(mine, start=False).close()
        assert llm.bus.has_subscribers  # a source it was given stays the caller's
        mine.close()
    latency, throughput = dash.latency.figure.data, dash.throughput.figure.data
    assert len(latency[0].x) == 2 and latency[0].y[0] is None and latency[0].y[1] > 0  # e2e mean after traffic
    assert throughput[0].name == "tokens/s" and throughput[0].y[1] > 0
    assert dash.queue.figure.data[0].y[-1] == 0  # nothing running once generate returned
    assert dash.memory.figure.data[0].y[-1] > 0 and "3 requests in all" in dash.summary.value


def test_background_refresh_starts_and_stops_cleanly(tiny):
    with LLM(tiny) as llm:
        dash = Dashboard(llm, interval_s=0.05)
        assert dash.running and dash.start_button.disabled
        llm.generate(["a"] * 4, SamplingParams(max_tokens=8, ignore_eos=True))
        while len(dash.throughput.figure.data[0].x) < 3:
            pass
        dash.stop()
        assert not dash.running and dash.stop_button.disabled and not dash.start_button.disabled
        assert not any(t.name == "labkit-monitor" for t in threading.enumerate())
        count = len(dash.throughput.figure.data[0].x)
        dash.start_button.click()
        assert dash.running
        dash.stop_button.click()
        assert not dash.running and len(dash.throughput.figure.data[0].x) >= count
        dash.close()


def test_history_is_bounded_and_memory_panel_says_what_it_shows():
    panel, memory = LatencyPanel(history=3), MemoryPanel()
    cpu = MemoryReading("cpu", 2**30, 8 * 2**30, 50.0, "process RSS (no NVML here: CPU fallback)")
    for i in range(5):
        snap = Snapshot(t=1000.0 + i, window_s=1, latency=Summary(1, 0.1 * i, 0.1, 0.1, 0.2 * i), memory=cpu)
        panel.draw(snap)
        memory.draw(snap)
    assert len(panel.figure.data[0].x) == 3 and panel.figure.data[1].y == pytest.approx((400.0, 600.0, 800.0))
    assert "RSS" in memory.figure.layout.title.text and memory.figure.data[1].y[-1] is None  # no RAM total line
    gpu = MemoryReading("gpu", 2 * 2**30, 80 * 2**30, 10.0, "GPU memory (NVML, 1 device)")
    memory.draw(Snapshot(t=2000.0, window_s=1, memory=gpu))
    assert "GPU" in memory.figure.layout.title.text and memory.figure.data[1].y[-1] == 80.0


def test_goodput_panel_and_slo_sliders_rejudge_the_window():
    from labkit.monitor import EventBus, RequestFinished

    bus = EventBus()
    dash = Dashboard(bus, start=False, window_s=60)
    assert all(not s.disabled and s.value == 0 for s in dash.slo_sliders.values())  # no SLO: all off
    for ttft in (0.05, 0.3, 0.6):
        bus.publish(RequestFinished("engine", finish_reason="stop", output_tokens=3, queue_s=0.01, ttft_s=ttft,
                                    e2e_s=ttft + 0.1, itl_s=(0.05,)))
    dash.refresh()
    good = dash.goodput.figure.data
    assert [t.name for t in good[:2]] == ["finished", "within SLO"] and good[1].y[-1] == good[0].y[-1] > 0
    assert good[3].y[-1] == 0  # nothing missed in prefill without an SLO
    dash.slo_sliders["ttft_ms"].value = 200  # two of the three now miss in prefill
    assert dash.source.slo.ttft_ms == 200 and len(good[0].x) == 2
    assert good[3].y[-1] == pytest.approx(2 * good[1].y[-1]) and "33%" in dash.summary.value
    dash.close()
    remote = Dashboard("http://127.0.0.1:9", start=False)
    assert all(s.disabled for s in remote.slo_sliders.values()) and "--slo" in remote.slo_note.value
    remote.close()


def test_panels_read_plainly_and_the_button_to_press_is_the_coloured_one():
    from labkit.monitor import EventBus

    dash = Dashboard(EventBus(), start=False)
    assert [t.name for t in dash.throughput.figure.data] == ["tokens/s"]  # one quantity, one axis
    for panel in dash.panels:
        assert panel.figure.layout.xaxis.tickformat == "%H:%M:%S" and panel.figure.layout.yaxis.rangemode == "tozero"
    assert dash.queue.figure.layout.yaxis2.range is None  # KV % scales to what the traffic used
    assert dash.start_button.button_style == "success" and dash.stop_button.button_style == ""
    dash.start()
    assert dash.start_button.button_style == "" and dash.stop_button.button_style == "warning"
    dash.close()
    memory = MemoryPanel()
    memory.draw(Snapshot(t=0.0, window_s=1.0, memory=MemoryReading("cpu", 2**30, 2**35, 0.1, "process RSS")))
    assert memory.figure.data[1].showlegend is False  # no empty "total" entry on a CPU



def test_a_p99_of_few_requests_is_labelled_max():
    from labkit.monitor import EventBus

    few, many = Summary.of([0.1 * i for i in range(1, 13)]), Summary.of([0.01 * i for i in range(1, 201)])
    panel = LatencyPanel()
    panel.draw(Snapshot(t=0.0, window_s=1.0, latency=few, ttft=many))
    assert [t.name for t in panel.figure.data] == ["e2e mean", "e2e max", "TTFT p50", "TTFT p99"]
    assert panel.figure.data[1].y[-1] == pytest.approx(1200.0)  # the slowest of the 12, not an interpolation
    panel.draw(Snapshot(t=1.0, window_s=1.0, latency=many, ttft=Summary()))
    assert [t.name for t in panel.figure.data][1::2] == ["e2e p99", "TTFT p99"]  # empty TTFT window: name kept
    dash = Dashboard(EventBus(), start=False)
    dash.draw(Snapshot(t=0.0, window_s=1.0, latency=few, ttft=many))
    assert "e2e max 1,200 ms" in dash.summary.value and "TTFT p99 " in dash.summary.value
    dash.close()
