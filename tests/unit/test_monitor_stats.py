"""labkit.monitor without a model: rolling statistics, the exposition fed by the bus, reading it back."""
from __future__ import annotations

import threading

import pytest

from labkit.monitor import (DeviceProbe, EventBus, RequestFinished, RollingStats, ServingMetrics, StepStats, Watcher,
                            nvml_available, source)
from labkit.monitor import scrape
from labkit.monitor.console import format_snapshot
from labkit.monitor.sources import snapshot_from_scrapes

pytestmark = pytest.mark.unit


def finished(t, e2e, ttft=0.1, tokens=10, reason="length", itl=(0.02, 0.04)):
    return RequestFinished("engine", t=t, finish_reason=reason, prompt_tokens=5, output_tokens=tokens, queue_s=0.01,
                           ttft_s=ttft, e2e_s=e2e, itl_s=itl)


def test_rolling_stats_give_percentiles_rates_and_forget_old_events():
    stats = RollingStats(window_s=10)
    stats.started = 0.0
    for i in range(100):  # e2e 0.01 .. 1.00 s, finished at t = 1..100 s... only the last 10 s stay
        stats.record(finished(t=float(i + 1), e2e=(i + 1) / 100))
    stats.record(StepStats("engine", t=99.5, batch_size=4, output_tokens=4, running=3, waiting=2, kv_usage=0.5))
    stats.record(StepStats("engine", t=100.0, batch_size=2, output_tokens=2, running=1, waiting=0, kv_usage=0.25))
    snap = stats.snapshot(at=100.0)
    assert snap.latency.count == 11  # t = 90 .. 100
    assert snap.latency.p50 == pytest.approx(0.95) and snap.latency.mean == pytest.approx(0.95)
    assert snap.latency.p99 == 1.0 and snap.latency.name(0.99) == "max"  # 11 values: their p99 is the slowest
    assert snap.requests_per_s == pytest.approx(1.1) and snap.tokens_per_s == pytest.approx(0.6)
    assert snap.itl.count == 22 and snap.itl.p50 == pytest.approx(0.03)
    assert snap.batch_size == 3 and (snap.running, snap.waiting, snap.kv_usage) == (1, 0, 0.25)
    assert snap.requests_total == 100 and snap.tokens_total == 1000


def test_cancelled_requests_count_but_are_not_timed():
    stats = RollingStats(window_s=60)
    stats.record(finished(t=stats.started, e2e=0.5))
    stats.record(finished(t=stats.started, e2e=99.0, reason="abort"))
    snap = stats.snapshot()
    assert snap.requests_total == 2 and snap.latency.count == 1 and snap.latency.p99 == 0.5


def test_metrics_are_fed_by_the_bus():
    bus = EventBus()
    metrics = ServingMetrics(bus, model_name="m")
    bus.publish(finished(t=0, e2e=0.3, tokens=7))
    bus.publish(finished(t=0, e2e=50.0, tokens=2, reason="abort"))
    bus.publish(StepStats("engine", batch_size=5, prefill_tokens=60, decode_tokens=4, running=5, waiting=1,
                          kv_usage=0.125))
    samples = scrape.parse(metrics.render())
    m = (("model_name", "m"),)
    expected = {"labkit:generation_tokens_total": 9, "labkit:e2e_request_latency_seconds_count": 1,
                "labkit:inter_token_latency_seconds_count": 2, "labkit:num_requests_running": 5,
                "labkit:num_requests_waiting": 1, "labkit:kv_cache_usage_perc": 0.125,
                "labkit:iteration_tokens_total_sum": 64}
    assert {name: samples[name][m] for name in expected} == expected
    assert samples["labkit:request_success_total"][(("finished_reason", "abort"), *m)] == 1
    assert samples["labkit:batch_size_bucket"][(("le", "8.0"), *m)] == 1
    text = metrics.render()
    declared = scrape.families(text)
    assert {"labkit:gpu_memory_used_bytes", "labkit:gpu_utilization_perc", "labkit:process_resident_memory_bytes",
            "labkit:cpu_utilization_perc"} <= declared


def test_two_scrapes_become_the_same_statistics_as_promql_would_give():
    bus = EventBus()
    metrics = ServingMetrics(bus)
    before = scrape.parse(metrics.render())
    for e2e in (0.12, 0.18, 0.6, 0.9):
        bus.publish(finished(t=0, e2e=e2e, tokens=25))
    bus.publish(StepStats("engine", batch_size=4, running=4, waiting=0, kv_usage=0.5))
    bus.publish(StepStats("engine", batch_size=2, running=0, waiting=0, kv_usage=0.0))
    snap = snapshot_from_scrapes(scrape.parse(metrics.render()), before, 10.0, "test")
    assert snap.requests_per_s == pytest.approx(0.4) and snap.tokens_per_s == pytest.approx(10.0)
    assert snap.latency.count == 4 and snap.latency.mean == pytest.approx(0.45)
    assert 0.15 <= snap.latency.p50 <= 0.3  # interpolated within the (0.15, 0.2] .. (0.5, 0.75] buckets
    assert 0.75 <= snap.latency.p99 <= 1.0
    assert snap.batch_size == 3 and snap.running == 0 and snap.memory is not None
    first = snapshot_from_scrapes(scrape.parse(metrics.render()), None, 0.0, "test")
    assert first.requests_per_s is None and first.latency.count == 0 and first.kv_usage == 0.0
    assert "end-to-end" in format_snapshot(snap) and "tokens/s" in format_snapshot(first)


def test_tails_of_few_values_are_named_and_valued_as_the_maximum():
    few, many = RollingStats(window_s=60), RollingStats(window_s=60)
    for i in range(1, 13):  # 12 requests: enough for no p95 or p99
        few.record(finished(t=few.started, e2e=i / 10))
    for i in range(1, 201):  # 200 requests: a p99 proper
        many.record(finished(t=many.started, e2e=i / 100))
    small, large = few.snapshot().latency, many.snapshot().latency
    assert (small.name(0.95), small.name(0.99), small.p95, small.p99) == ("max", "max", 1.2, 1.2)
    assert (large.name(0.95), large.name(0.99)) == ("p95", "p99") and large.p99 == pytest.approx(1.9801)  # interpolated: not the max, 2.0
    table = format_snapshot(few.snapshot())
    end_to_end = next(line for line in table.splitlines() if line.startswith("end-to-end"))
    assert end_to_end.split()[-5:] == ["1,200", "(max)", "1,200", "(max)", "12"] and "p95 needs 20, p99 100" in table
    table = format_snapshot(many.snapshot())
    assert "(max)" not in table and "p95 needs" not in table


def test_a_histogram_of_few_requests_gives_a_max_estimate():
    bus = EventBus()
    metrics = ServingMetrics(bus)
    before = scrape.parse(metrics.render())
    for e2e in (0.12, 0.18, 0.6, 0.9):
        bus.publish(finished(t=0, e2e=e2e))
    latency = snapshot_from_scrapes(scrape.parse(metrics.render()), before, 10.0, "test").latency
    assert latency.name(0.99) == "max" and 0.75 < latency.p99 <= 1.0  # within the slowest request's bucket
    assert "(max)" in format_snapshot(snapshot_from_scrapes(scrape.parse(metrics.render()), before, 10.0, "test"))


def test_counter_reset_and_merge():
    old = scrape.parse('x_total 10\nh_bucket{le="1"} 5\nh_bucket{le="+Inf"} 6\n')
    new = scrape.parse('x_total 3\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\n')
    assert scrape.increase(new, old, "x_total") == 3  # restarted server: counts from zero
    assert scrape.bucket_increase(new, old, "h") == {1.0: 1, float("inf"): 1}
    merged = scrape.merge([scrape.parse('a{r="x"} 1\nb 2'), scrape.parse('a{r="x"} 4\nb NaN')])
    assert merged["a"][(("r", "x"),)] == 5 and scrape.value(merged, "b") == 2


def test_device_probe_never_raises_and_labels_the_fallback():
    reading = DeviceProbe().read()
    if nvml_available():
        assert reading.kind == "gpu" and reading.total_bytes > 0
    else:
        assert reading.kind == "cpu" and "RSS" in reading.label and "no NVML" in reading.label
        assert reading.used_bytes > 0 and 0 <= reading.utilization_perc <= 1


def test_watcher_reads_in_the_background_reports_errors_and_stops():
    seen, errors = [], []
    bus = EventBus()
    local = source(bus, window_s=5)
    watcher = Watcher(local, seen.append, interval_s=0.01, on_error=errors.append).start()
    while len(seen) < 3:
        pass
    watcher.stop()
    assert not watcher.running and not any(t.name == "labkit-monitor" for t in threading.enumerate())
    local.close()
    assert not bus.has_subscribers

    class Broken:
        def read(self):
            raise OSError("gone")

    assert Watcher(Broken(), seen.append, on_error=errors.append).tick() is None and str(errors[0]) == "gone"
    with pytest.raises(TypeError, match="cannot monitor"):
        source(object())
