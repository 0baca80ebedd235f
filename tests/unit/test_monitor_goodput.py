"""Goodput over a window: judged from the same per-request timings the counters use, re-judged on demand."""
from __future__ import annotations

import pytest

from labkit.monitor import RequestFinished, RollingStats
from labkit.monitor.slo import SLO

pytestmark = pytest.mark.unit


def finished(t, queue, ttft, e2e, itl=(0.02, 0.02), reason="stop"):
    timing = {} if t is None else {"t": t}
    return RequestFinished("engine", **timing, finish_reason=reason, prompt_tokens=5, output_tokens=3, queue_s=queue,
                           ttft_s=ttft, e2e_s=e2e, itl_s=itl)


def window() -> RollingStats:
    stats = RollingStats(window_s=10, slo=SLO(ttft_ms=100))
    stats.started = 0.0
    stats.record(finished(-20.0, 0.9, 0.9, 0.9))  # outside the window
    stats.record(finished(1.0, 0.01, 0.05, 0.3))  # fast
    stats.record(finished(2.0, 0.20, 0.25, 0.5))  # queued past the TTFT budget
    stats.record(finished(3.0, 0.01, 0.40, 0.9, itl=(0.2, 0.3)))  # slow prompt, slow tokens
    stats.record(finished(4.0, 0.0, 0.0, 0.0, reason="abort"))  # cancelled: not judged
    return stats


def test_goodput_of_the_window_with_the_stats_slo():
    g = window().snapshot(at=10.0).goodput
    assert (g.judged, g.good, g.missed) == (3, 1, {"queue": 1, "prefill": 1, "decode": 0})
    assert g.requests_per_s == pytest.approx(0.1) and g.fraction == pytest.approx(1 / 3)


def test_moving_the_slo_rejudges_the_same_window():
    stats = window()
    loose = stats.snapshot(at=10.0, slo=SLO(ttft_ms=1000)).goodput
    assert (loose.good, loose.judged) == (3, 3)
    by_itl = stats.snapshot(at=10.0, slo=SLO(itl_ms=100)).goodput
    assert (by_itl.good, by_itl.missed["decode"]) == (2, 1)
    assert stats.snapshot(at=10.0).goodput.good == 1  # the stats' own SLO is unchanged
    assert stats.snapshot(at=10.0, slo=SLO()).goodput.fraction == 1.0  # no SLO: every finished request is good


def test_a_remote_source_reads_goodput_from_the_servers_counters():
    from labkit.monitor import ServingMetrics, scrape
    from labkit.monitor.sources import snapshot_from_scrapes

    metrics = ServingMetrics(model_name="m", slo=SLO(ttft_ms=100, e2e_ms=1000))
    before = scrape.parse(metrics.render())
    for queue, ttft, e2e in ((0.01, 0.05, 0.3), (0.2, 0.3, 0.5), (0.01, 0.05, 3.0), (0.01, 0.05, 0.2)):
        metrics.record_finished(finish_reason="stop", prompt_tokens=3, output_tokens=2, queue_s=queue, ttft_s=ttft,
                                e2e_s=e2e, itl_s=(0.01,))
    g = snapshot_from_scrapes(scrape.parse(metrics.render()), before, 2.0, "test").goodput
    assert (g.good, g.judged, g.missed) == (2, 4, {"queue": 1, "prefill": 0, "decode": 1})
    assert g.requests_per_s == pytest.approx(1.0) and g.slo == SLO(ttft_ms=100, e2e_ms=1000)
    assert snapshot_from_scrapes(scrape.parse(metrics.render()), None, 0.0, "test").goodput.requests_per_s is None


def test_a_local_source_of_a_server_judges_against_its_slo_and_can_be_moved():
    from types import SimpleNamespace

    from labkit import ServerConfig
    from labkit.monitor import EventBus, source

    bus = EventBus()
    server = SimpleNamespace(bus=bus, app=SimpleNamespace(state=SimpleNamespace(config=ServerConfig(
        slo=SLO(ttft_ms=100)))))
    local = source(server, window_s=60)
    bus.publish(finished(None, 0.01, 0.3, 0.5))
    assert local.slo == SLO(ttft_ms=100) and local.read().goodput.missed["prefill"] == 1
    local.slo = SLO(ttft_ms=500)
    assert local.read().goodput.good == 1
    local.close()


def test_the_console_says_goodput_against_which_slo():
    from labkit.monitor import format_snapshot

    text = format_snapshot(window().snapshot(at=10.0))
    assert "goodput      0.10 requests/s within SLO (ttft 100 ms), 33% of 3; missed in queue 1, prefill 1" in text
