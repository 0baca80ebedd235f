"""Request traces with OpenTelemetry, exported in batches over OTLP/HTTP (protobuf).

Off unless an endpoint is given (`--otlp-traces-endpoint`, vLLM's flag). Then each app (a server, a router)
has a `Tracing` of its own: its own TracerProvider, never the global one, so two servers in one process keep
their spans apart, and `shutdown()` flushes what is still batched. With tracing off nothing here runs: the
OpenTelemetry SDK is not even imported, and no span object is made.

A request's span is a child of the caller's W3C `traceparent` when it sends one. The engine's phases (queue,
prefill, decode) become child spans built after the request ends from the timings the engine measured, so
the engine's step loop does no tracing work.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit

TRACE_HEADERS = (b"traceparent", b"tracestate")
UNTRACED_PATHS = frozenset({"/metrics", "/health", "/ready"})  # scrapes and probes: nobody follows those


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: as given, or with `/v1/traces` added when it names no path (a collector's
    address, such as http://127.0.0.1:4318)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"otlp_traces_endpoint must be an http:// or https:// URL (OTLP over HTTP), got {endpoint!r}")
    return endpoint if parts.path.strip("/") else endpoint.rstrip("/") + "/v1/traces"


class Tracing:
    """One app's tracer, exporting to `endpoint` as `service_name` (the OpenTelemetry resource's service.name)."""

    def __init__(self, endpoint: str, service_name: str):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
        self.tracer = self.provider.get_tracer("labkit")
        self._propagator = TraceContextTextMapPropagator()

    def start_request(self, scope):
        """A SERVER span for one HTTP request (an ASGI scope), the child of the caller's `traceparent` if any."""
        from opentelemetry.trace import SpanKind

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in TRACE_HEADERS}
        method, path = scope["method"], scope["path"]
        return self.tracer.start_span(f"{method} {path}", context=self._propagator.extract(carrier),
                                      kind=SpanKind.SERVER,
                                      attributes={"http.request.method": method, "url.path": path})

    @staticmethod
    def activate(span):
        """Make `span` current (the `labkit` log lines written meanwhile carry its ids); returns the token
        `end_request` takes."""
        from opentelemetry import context, trace

        return context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end_request(span, status: int, token) -> None:
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(StatusCode.ERROR)
        span.end()
        context.detach(token)

    @staticmethod
    def ids(span) -> dict[str, str]:
        """The span's ids as ECS names them (lower-case hex)."""
        ctx = span.get_span_context()
        return {"trace.id": format(ctx.trace_id, "032x"), "span.id": format(ctx.span_id, "016x")}

    def headers_for(self, span) -> list[tuple[bytes, bytes]]:
        """`traceparent` (and `tracestate`) naming `span` as the parent of a request sent on its behalf."""
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]

    def add_phases(self, parent, arrival: float, queue_s: float, ttft_s: float | None, e2e_s: float,
                   attributes: dict | None = None) -> None:
        """Child spans of `parent` for one engine request, from the engine's timings (`arrival` on the
        time.perf_counter clock, the rest in seconds after it): queue (until first scheduled), prefill (until
        the first token) and decode (until finished). Without a first token, prefill lasts to the end."""
        from opentelemetry import trace

        epoch_ns = time.time_ns() - time.perf_counter_ns() + int(arrival * 1e9)  # perf_counter -> wall clock
        marks = [0.0, queue_s, e2e_s] if ttft_s is None else [0.0, queue_s, ttft_s, e2e_s]
        context = trace.set_span_in_context(parent)
        for name, start, end in zip(("queue", "prefill", "decode"), marks, marks[1:]):
            span = self.tracer.start_span(name, context=context, start_time=epoch_ns + int(start * 1e9),
                                          attributes=attributes)
            span.end(end_time=epoch_ns + int(end * 1e9))

    def shutdown(self) -> None:
        """Export what is still batched, then stop."""
        self.provider.shutdown()
