"""The serving metrics of DESIGN.md on prometheus_client, one `CollectorRegistry` per app (no global state).

Names follow vLLM's with the `labkit:` prefix, and every engine series carries vLLM's `model_name` label.
Every `_perc` gauge is a fraction from 0 to 1 (vLLM's convention for `kv_cache_usage_perc`).
`ServingMetrics` is fed by the monitor's event bus (finished requests, engine steps); `FleetMetrics` is the
router's (replicas, scale decisions, forwarding). Both render the text format Prometheus scrapes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily

from .slo import PHASES, SLO

# The classic text format: Prometheus 2.x (Debian's) and every scraper read it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Latency buckets in seconds: fine below 100 ms (inter-token), coarse up to minutes (end-to-end on CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                   1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
EMBED_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MODEL = ("model_name",)


def render(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name `registry` can expose, whether or not it has samples yet (histograms as _bucket, _sum
    and _count, counters with _total): what a Grafana query or an alert may name."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    return {family.name + suffix for family in registry.collect()
            for suffix in suffixes.get(family.type, ("",))}


def _never_raises(read: Callable[[], float]) -> Callable[[], float]:
    """A probe that fails at scrape time gives NaN instead of breaking the whole scrape."""
    def safe() -> float:
        try:
            return float(read())
        except Exception:
            return math.nan
    return safe


class _ReadAtScrape:
    """A gauge family with labels read together at scrape time: `read()` returns {label values: value} (one
    sample per GPU, say). No samples is a valid answer: the family is still declared."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], read: Callable[[], dict]):
        self.name, self.documentation, self.labelnames, self.read = name, documentation, labelnames, read

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        try:
            values = self.read()
        except Exception:
            values = {}
        for key, value in sorted(values.items()):
            family.add_metric([str(k) for k in key], float(value))
        yield family


class ServingMetrics:
    """The serving metrics of one server (or one engine in a notebook), fed by an event bus (`bus=` or
    `attach(bus)`): finished requests fill the counters and latency histograms, engine steps the batch
    histograms and the queue/KV gauges. Gauges given a callable (`running=`, `waiting=`, `kv_usage=`) read it
    at scrape time instead: exact even when the engine idles. With `slo`, each finished request is judged:
    `labkit:goodput_requests_total` counts those that met every SLO, `labkit:slo_missed_requests_total{phase}`
    the others by the phase that broke them (without SLOs every finished request is good).
    Device gauges read NVML at scrape time; without NVML the GPU families are declared with no samples and the
    CPU fallback (process RSS, machine CPU utilisation) carries the memory story."""

    def __init__(self, bus=None, *, model_name: str = "labkit", encoder_name: str | None = None,
                 running: Callable[[], float] | None = None, waiting: Callable[[], float] | None = None,
                 kv_usage: Callable[[], float] | None = None, slo: SLO = SLO()):
        from .devices import DeviceProbe, gpu_readings

        self.model_name, self.slo = model_name, slo
        r = self.registry = CollectorRegistry(auto_describe=True)
        m = {"model_name": model_name}
        gauges = {}
        for key, name, doc, read in (
                ("running", "labkit:num_requests_running", "Requests in the running batch.", running),
                ("waiting", "labkit:num_requests_waiting", "Requests waiting to be scheduled.", waiting),
                ("kv", "labkit:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0 to 1).", kv_usage)):
            gauges[key] = Gauge(name, doc, MODEL, registry=r).labels(**m)
            if read is not None:
                gauges[key].set_function(_never_raises(read))
        self.running, self.waiting, self.kv_usage = gauges["running"], gauges["waiting"], gauges["kv"]
        self._live = {key: read is not None for key, read in (("running", running), ("waiting", waiting),
                                                              ("kv", kv_usage))}

        def counter(name, doc, labels=()):
            return Counter(name, doc, (*MODEL, *labels), registry=r)

        def histogram(name, doc, buckets=LATENCY_BUCKETS):
            return Histogram(name, doc, MODEL, buckets=buckets, registry=r).labels(**m)

        self.prompt_tokens = counter("labkit:prompt_tokens_total", "Prompt tokens processed.").labels(**m)
        self.generation_tokens = counter("labkit:generation_tokens_total", "Tokens generated.").labels(**m)
        self.prefix_queries = counter("labkit:prefix_cache_queries_total",
                                      "Prompt tokens looked up in the prefix cache.").labels(**m)
        self.prefix_hits = counter("labkit:prefix_cache_hits_total", "Prompt tokens found in the prefix cache "
                                   "(their keys and values were not computed again).").labels(**m)
        self._success = counter("labkit:request_success_total", "Finished requests by finish reason.",
                                ("finished_reason",))
        self._errors = counter("labkit:request_errors_total", "Requests answered with an HTTP error.", ("status",))
        self.goodput = counter("labkit:goodput_requests_total", "Finished requests that met every SLO (every "
                               "finished request when no SLO is set); cancelled ones are not judged.").labels(**m)
        missed = counter("labkit:slo_missed_requests_total", "Finished requests that missed an SLO, by the phase "
                         "that broke it: queue (waiting), prefill (computing the prompt) or decode (generating).",
                         ("phase",))
        self.missed = {phase: missed.labels(phase=phase, **m) for phase in PHASES}
        targets = Gauge("labkit:slo_target_seconds", "The SLOs this server judges requests against (seconds; "
                        "itl applies to each request's mean inter-token latency).", (*MODEL, "slo"), registry=r)
        for slo_name, seconds in slo.targets_s().items():
            targets.labels(slo=slo_name, **m).set(seconds)
        self.ttft = histogram("labkit:time_to_first_token_seconds", "Time to first token.")
        self.itl = histogram("labkit:inter_token_latency_seconds", "Time between consecutive tokens.")
        self.e2e = histogram("labkit:e2e_request_latency_seconds", "End-to-end request latency.")
        self.queue = histogram("labkit:request_queue_time_seconds", "Time spent waiting to be scheduled.")
        self.batch_size = histogram("labkit:batch_size", "Requests per engine step.", BATCH_BUCKETS)
        self.step_tokens = histogram("labkit:iteration_tokens_total", "Tokens (prompt and decode) per engine step.",
                                     STEP_TOKEN_BUCKETS)
        self._embed_batch = Histogram("labkit:embedding_batch_size", "Texts per encoder call of the dynamic "
                                      "batcher.", MODEL, buckets=EMBED_BATCH_BUCKETS, registry=r)
        self.encoder_name = encoder_name or model_name
        probe = DeviceProbe()
        for name, doc, field in (
                ("labkit:gpu_utilization_perc", "GPU utilisation (0 to 1), per device (NVML).", "utilization_perc"),
                ("labkit:gpu_memory_used_bytes", "GPU memory in use, per device (NVML).", "memory_used_bytes"),
                ("labkit:gpu_memory_total_bytes", "GPU memory in all, per device (NVML).", "memory_total_bytes")):
            r.register(_ReadAtScrape(name, doc, ("gpu",), lambda field=field: {
                (g.index,): getattr(g, field) for g in gpu_readings()}))
        Gauge("labkit:process_resident_memory_bytes", "Resident memory of this process.",
              registry=r).set_function(_never_raises(probe.process_resident_bytes))
        Gauge("labkit:cpu_utilization_perc", "Machine CPU utilisation since the last scrape (0 to 1).",
              registry=r).set_function(_never_raises(probe.cpu_utilization_perc))
        if bus is not None:
            self.attach(bus)

    def attach(self, bus):
        """Subscribe to `bus`; returns the unsubscribe."""
        from .events import QueueDepth, RequestFinished, StepStats

        return bus.subscribe(self.record, RequestFinished, StepStats, QueueDepth)

    def record(self, event) -> None:
        """One event from the bus (on the publisher's thread: counters and histograms only)."""
        from .events import QueueDepth, RequestFinished, StepStats

        if isinstance(event, RequestFinished):
            self.record_finished(finish_reason=event.finish_reason, prompt_tokens=event.prompt_tokens,
                                 output_tokens=event.output_tokens, queue_s=event.queue_s, ttft_s=event.ttft_s,
                                 itl_s=event.itl_s, e2e_s=event.e2e_s, cached_tokens=event.cached_tokens)
        elif isinstance(event, StepStats):
            self.batch_size.observe(event.batch_size)
            self.step_tokens.observe(event.prefill_tokens + event.decode_tokens)
            self._set_queue(event.running, event.waiting, event.kv_usage)
        elif isinstance(event, QueueDepth):
            self._set_queue(event.running, event.waiting, event.kv_usage)

    def _set_queue(self, running: float, waiting: float, kv: float | None) -> None:
        if not self._live["running"]:
            self.running.set(running)
        if not self._live["waiting"]:
            self.waiting.set(waiting)
        if kv is not None and not self._live["kv"]:
            self.kv_usage.set(kv)

    def record_finished(self, *, finish_reason: str, prompt_tokens: int, output_tokens: int,
                        queue_s: float | None = None, ttft_s: float | None = None,
                        itl_s: Iterable[float] = (), e2e_s: float | None = None,
                        cached_tokens: int | None = None) -> None:
        """One finished generation request, from the engine's per-request timings. A cancelled one ("abort":
        a client that hung up, a timeout, shutdown) counts, but its timings stay out of the latency histograms
        and it is not judged against the SLOs. `cached_tokens` (None if it never reached the batch) feeds the
        prefix-cache counters."""
        self.prompt_tokens.inc(prompt_tokens)
        if cached_tokens is not None:
            self.prefix_queries.inc(prompt_tokens)
            self.prefix_hits.inc(cached_tokens)
        self.generation_tokens.inc(output_tokens)
        self._success.labels(model_name=self.model_name, finished_reason=finish_reason).inc()
        if finish_reason == "abort":
            return
        gaps = tuple(itl_s)
        for histogram, value in ((self.queue, queue_s), (self.ttft, ttft_s), (self.e2e, e2e_s)):
            if value is not None:
                histogram.observe(value)
        for gap in gaps:
            self.itl.observe(gap)
        phase = self.slo.missed_phase(ttft_s=ttft_s, e2e_s=e2e_s, itl_s=gaps, queue_s=queue_s)
        (self.goodput if phase is None else self.missed[phase]).inc()

    def record_error(self, status: int) -> None:
        """A request answered with an HTTP error (any route)."""
        self._errors.labels(model_name=self.model_name, status=str(status)).inc()

    def record_embedding_batch(self, size: int) -> None:
        self._embed_batch.labels(model_name=self.encoder_name).observe(size)

    def render(self) -> str:
        return render(self.registry)

    def series_names(self) -> set[str]:
        return series_names(self.registry)


class FleetMetrics:
    """The router's own series: replicas serving and wanted, requests forwarded, retried and refused, and the
    autoscaler's decisions (from `ScaleDecision` events on the router's bus). Engine series of the replicas
    are added at scrape time by the router (`federate`), not declared here."""

    def __init__(self, *, replicas: Callable[[], float], desired: Callable[[], float],
                 in_flight: Callable[[], float], bus=None):
        r = self.registry = CollectorRegistry(auto_describe=True)
        for name, doc, read in (
                ("labkit:replicas", "Healthy replicas serving behind the router.", replicas),
                ("labkit:replicas_desired", "Replicas wanted (by the autoscaler or the fixed size).", desired),
                ("labkit:router_requests_in_flight", "Requests the router is forwarding now.", in_flight)):
            Gauge(name, doc, registry=r).set_function(_never_raises(read))
        self.requests = Counter("labkit:router_requests_total", "Requests forwarded, by replica and policy.",
                                ("replica", "policy"), registry=r)
        self.retries = Counter("labkit:router_retries_total", "Requests retried on another replica.", registry=r)
        self.rejected = Counter("labkit:router_rejected_total", "Requests the router answered itself.",
                                ("status",), registry=r)
        self.scale_decisions = Counter("labkit:scale_decisions_total", "Autoscaler decisions that changed the "
                                       "replica count, by direction.", ("direction",), registry=r)
        if bus is not None:
            from .events import ScaleDecision
            bus.subscribe(self.record_scale_decision, ScaleDecision)

    def record_scale_decision(self, event) -> None:
        if event.desired != event.current:
            self.scale_decisions.labels(direction="up" if event.desired > event.current else "down").inc()

    def render(self) -> str:
        return render(self.registry)

    def series_names(self) -> set[str]:
        return series_names(self.registry)
