"""Tracing's parts: the endpoint, the engine phases built from timings, one provider per app, and nothing at
all when tracing is off."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from otlp_receiver import OTLPReceiver

from labkit import RouterConfig, ServerConfig
from labkit.monitor.tracing import Tracing, traces_url


def test_the_endpoint_is_an_http_url_and_a_bare_collector_address_gets_v1_traces():
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("https://otel.example/") == "https://otel.example/v1/traces"
    assert traces_url("http://c:4318/custom/path") == "http://c:4318/custom/path"
    for config in (ServerConfig, RouterConfig):
        with pytest.raises(ValueError, match="must be an http:// or https:// URL .* got 'localhost:4318'"):
            config(otlp_traces_endpoint="localhost:4318")
        with pytest.raises(ValueError, match="grpc://c:4317"):
            config(otlp_traces_endpoint="grpc://c:4317")


def test_phases_follow_the_engine_timings_and_two_apps_keep_their_spans_apart():
    with OTLPReceiver() as first, OTLPReceiver() as second:
        a, b = Tracing(first.url, "a"), Tracing(second.url, "b")
        span = a.start_request({"method": "POST", "path": "/v1/completions", "headers": [
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]})
        arrival, arrival_ns = time.perf_counter() - 1.0, time.time_ns() - 1_000_000_000  # a second ago
        a.add_phases(span, arrival, queue_s=0.25, ttft_s=0.5, e2e_s=0.875, attributes={"labkit.choice": 0})
        a.add_phases(span, arrival, queue_s=0.25, ttft_s=None, e2e_s=0.375, attributes={"labkit.choice": 1})
        span.end()
        b.start_request({"method": "GET", "path": "/v1/models", "headers": []}).end()
        a.shutdown()
        b.shutdown()
    assert {s["service"] for s in first.spans} == {"a"} and [s["service"] for s in second.spans] == ["b"]
    request = next(s for s in first.spans if s["name"] == "POST /v1/completions")
    assert request["parent_id"] == "b7ad6b7169203331" and request["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    phases = {}
    for s in sorted(first.spans, key=lambda s: s["start_ns"]):
        if s["parent_id"] == request["span_id"]:
            phases.setdefault(s["attributes"]["labkit.choice"], []).append((s["name"], s["end_ns"] - s["start_ns"]))
    assert phases[0] == [("queue", 250_000_000), ("prefill", 250_000_000), ("decode", 375_000_000)]
    assert phases[1] == [("queue", 250_000_000), ("prefill", 125_000_000)]  # no first token: no decode
    starts = sorted(s["start_ns"] for s in first.spans if s["name"] == "queue")
    assert starts[1] - starts[0] < 1e6 and abs(starts[0] - arrival_ns) < 1e7  # on the wall clock


def test_off_means_no_span_and_no_opentelemetry_at_all():
    """Serving a request through the middleware with tracing off imports neither the OpenTelemetry SDK nor its
    exporter (FastAPI imports the API, whose global tracer does nothing: labkit never sets one)."""
    code = """
import asyncio, sys
from labkit.server.access_log import RequestContextMiddleware
seen = {}
async def app(scope, receive, send):
    seen["span"] = scope["state"]["span"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})
async def send(message):
    pass
scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [(b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]}
asyncio.run(RequestContextMiddleware(app)(scope, None, send))
print(seen["span"], sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["None", "[]"], done.stderr
