"""The Prometheus exposition is well-formed text with the DESIGN.md names."""
from __future__ import annotations

import re

import pytest

from labkit.monitor.metrics import Counter, Histogram, Registry, ServingMetrics

pytestmark = pytest.mark.unit

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? '
                    r'(-?[0-9.e+-]+|NaN|\+Inf|-Inf)$')


def test_serving_metrics_render_valid_exposition_with_design_names():
    metrics = ServingMetrics(running=lambda: 3, waiting=lambda: 1, kv_usage=lambda: 0.25)
    metrics.record_finished(finish_reason="length", prompt_tokens=10, output_tokens=4, queue_s=0.01, ttft_s=0.05,
                            itl_s=[0.02, 0.03, 0.02], e2e_s=0.2)
    text = metrics.render()
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    for name in ("labkit:num_requests_running 3", "labkit:num_requests_waiting 1", "labkit:kv_cache_usage_perc 0.25",
                 "labkit:prompt_tokens_total 10", "labkit:generation_tokens_total 4",
                 'labkit:request_success_total{finished_reason="length"} 1',
                 "labkit:inter_token_latency_seconds_count 3", "labkit:e2e_request_latency_seconds_count 1",
                 "labkit:time_to_first_token_seconds_count 1", "labkit:request_queue_time_seconds_count 1"):
        assert name in text
    assert "labkit:process_resident_memory_bytes" in text or "labkit:gpu_memory_used_bytes" in text


def test_histogram_buckets_are_cumulative_and_end_at_inf():
    h = Histogram("x_seconds", "doc", buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.7, 5.0):
        h.observe(v)
    lines = h.samples()
    assert lines[:3] == ['x_seconds_bucket{le="0.1"} 1', 'x_seconds_bucket{le="1"} 3', 'x_seconds_bucket{le="+Inf"} 4']
    assert lines[-1] == "x_seconds_count 4" and h.sum == pytest.approx(6.25)


def test_counter_labels_are_escaped_and_checked():
    r = Registry()
    c = r.add(Counter("c_total", "doc", ("reason",)))
    c.inc(2, reason='a"b')
    assert 'c_total{reason="a\\"b"} 2' in r.render()
    with pytest.raises(ValueError):
        c.inc(other="x")
    with pytest.raises(ValueError):
        c.inc(-1, reason="x")
    with pytest.raises(ValueError):
        r.add(Counter("c_total", "again"))


def test_a_failing_gauge_source_does_not_break_the_scrape():
    metrics = ServingMetrics(running=lambda: 1 / 0)
    assert "labkit:num_requests_running NaN" in metrics.render()
