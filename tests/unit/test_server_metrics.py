"""The Prometheus exposition: prometheus_client registries with DESIGN.md's names, vLLM's `model_name` label,
fractions for every `_perc`, goodput judged against SLOs, and a router's sum over replicas."""
from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from labkit.monitor import federate
from labkit.monitor.metrics import FleetMetrics, ServingMetrics
from labkit.monitor.slo import SLO

pytestmark = pytest.mark.unit


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def finish(metrics: ServingMetrics, reason: str = "stop", **timings) -> None:
    defaults = {"queue_s": 0.01, "ttft_s": 0.05, "e2e_s": 0.2, "itl_s": [0.02, 0.03, 0.02]}
    metrics.record_finished(finish_reason=reason, prompt_tokens=10, output_tokens=4, **{**defaults, **timings})


def test_engine_series_carry_model_name_and_the_design_names():
    metrics = ServingMetrics(model_name="smol", running=lambda: 3, waiting=lambda: 1, kv_usage=lambda: 0.25)
    finish(metrics, "length")
    text = metrics.render()
    m = {"model_name": "smol"}
    assert value(text, "labkit:num_requests_running", **m) == 3
    assert value(text, "labkit:num_requests_waiting", **m) == 1
    assert value(text, "labkit:kv_cache_usage_perc", **m) == 0.25
    assert value(text, "labkit:prompt_tokens_total", **m) == 10
    assert value(text, "labkit:generation_tokens_total", **m) == 4
    assert value(text, "labkit:request_success_total", finished_reason="length", **m) == 1
    assert value(text, "labkit:inter_token_latency_seconds_count", **m) == 3
    for name in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert value(text, f"labkit:{name}_seconds_count", **m) == 1
    device_series = {"labkit:process_resident_memory_bytes", "labkit:cpu_utilization_perc"}
    for (name, labels), _ in samples(text).items():
        if name not in device_series:
            assert dict(labels).get("model_name") == "smol", name


def test_every_perc_is_a_fraction():
    metrics = ServingMetrics(kv_usage=lambda: 0.5)
    metrics.render()  # the CPU reading is over the time since the previous scrape
    for (name, _), v in samples(metrics.render()).items():
        if name.endswith("_perc"):
            assert 0.0 <= v <= 1.0, (name, v)


def test_a_failing_gauge_source_does_not_break_the_scrape():
    metrics = ServingMetrics(model_name="m", running=lambda: 1 / 0)
    assert math.isnan(value(metrics.render(), "labkit:num_requests_running", model_name="m"))


def test_without_slos_every_finished_request_is_good_and_cancelled_ones_are_not_judged():
    metrics = ServingMetrics(model_name="m")
    finish(metrics, ttft_s=30.0, e2e_s=60.0)
    finish(metrics, "abort")
    text = metrics.render()
    assert value(text, "labkit:goodput_requests_total", model_name="m") == 1
    assert all(value(text, "labkit:slo_missed_requests_total", model_name="m", phase=p) == 0
               for p in ("queue", "prefill", "decode"))
    assert not any(name == "labkit:slo_target_seconds" for name, _ in samples(text))


def test_goodput_counts_requests_within_every_slo_and_misses_by_phase():
    metrics = ServingMetrics(model_name="m", slo=SLO(ttft_ms=100, itl_ms=50, e2e_ms=1000))
    finish(metrics)  # within all three
    finish(metrics, queue_s=0.2, ttft_s=0.25)  # waited past the TTFT budget
    finish(metrics, queue_s=0.01, ttft_s=0.3)  # a slow prompt
    finish(metrics, itl_s=[0.2, 0.2])  # slow tokens
    finish(metrics, e2e_s=2.0)  # the end-to-end budget ran out while generating
    text = metrics.render()
    assert value(text, "labkit:goodput_requests_total", model_name="m") == 1
    assert {p: value(text, "labkit:slo_missed_requests_total", model_name="m", phase=p)
            for p in ("queue", "prefill", "decode")} == {"queue": 1, "prefill": 1, "decode": 2}
    assert value(text, "labkit:slo_target_seconds", model_name="m", slo="ttft") == pytest.approx(0.1)
    assert value(text, "labkit:slo_target_seconds", model_name="m", slo="e2e") == pytest.approx(1.0)


def test_series_names_list_what_a_query_may_name_before_any_sample():
    names = ServingMetrics().series_names()
    assert {"labkit:goodput_requests_total", "labkit:slo_missed_requests_total", "labkit:kv_cache_usage_perc",
            "labkit:time_to_first_token_seconds_bucket", "labkit:time_to_first_token_seconds_sum",
            "labkit:gpu_memory_used_bytes"} <= names
    assert "labkit:replicas" not in names  # the router's, declared once (FleetMetrics)


def test_the_router_adds_its_replicas_up():
    replicas = [ServingMetrics(model_name="m", running=lambda: 2, kv_usage=lambda: kv) for kv in (0.25, 0.75)]
    for metrics in replicas:
        finish(metrics)
    fleet = FleetMetrics(replicas=lambda: 2, desired=lambda: 3, in_flight=lambda: 1)
    fleet_text = federate.render([m.render() for m in replicas] + ['{"error": "not an exposition"}'])
    text = fleet.render() + fleet_text
    assert value(text, "labkit:replicas") == 2 and value(text, "labkit:replicas_desired") == 3
    assert value(text, "labkit:generation_tokens_total", model_name="m") == 8
    assert value(text, "labkit:goodput_requests_total", model_name="m") == 2
    assert value(text, "labkit:num_requests_running", model_name="m") == 4  # a count: summed
    assert value(text, "labkit:kv_cache_usage_perc", model_name="m") == 0.75  # a fraction: the fullest replica
    assert value(text, "labkit:time_to_first_token_seconds_bucket", model_name="m", le="+Inf") == 2
    assert not any(name.endswith("_created") for name, _ in samples(fleet_text))


def test_scale_decisions_are_counted_from_the_bus():
    from labkit.monitor import EventBus, ScaleDecision

    bus = EventBus()
    fleet = FleetMetrics(replicas=lambda: 1, desired=lambda: 1, in_flight=lambda: 0, bus=bus)
    bus.publish(ScaleDecision("autoscaler", current=1, desired=2, reason="queue"))
    bus.publish(ScaleDecision("autoscaler", current=2, desired=2, reason="steady"))
    assert value(fleet.render(), "labkit:scale_decisions_total", direction="up") == 1
    assert ("labkit:scale_decisions_total", frozenset({("direction", "down")})) not in samples(fleet.render())
