"""A small, dependency-free Prometheus exposition: counters, gauges and histograms with labels.

Names follow DESIGN.md (`labkit:` prefix, after vLLM's). `ServingMetrics` is fed by the monitor's event bus
(finished requests, engine steps, replica counts); `render()` writes the text format (version 0.0.4) that
Prometheus scrapes.
Thread-safe: the engine's thread and the event loop may both record.
"""
from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets in seconds: fine below 100 ms (inter-token), coarse up to minutes (end-to-end on CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                   1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = ()):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.documentation}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, documentation, labelnames=()):
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelValues, float] = {} if self.labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value set directly, or read from `source` at scrape time (queue lengths, KV usage, memory).
    `initial=None` renders no sample until the first `set` (a family declared before anyone feeds it)."""

    kind = "gauge"

    def __init__(self, name, documentation, source: Callable[[], float] | None = None, initial: float | None = 0.0):
        super().__init__(name, documentation)
        self._value = initial
        self._source = source

    def set(self, value: float) -> None:
        self._value = float(value)

    def value(self) -> float | None:
        if self._source is not None:
            try:
                return float(self._source())
            except Exception:  # a probe that fails at scrape time must not break the scrape
                return math.nan
        return self._value

    def samples(self) -> list[str]:
        value = self.value()
        if value is None:
            return []
        return [f"{self.name} {'NaN' if math.isnan(value) else _number(value)}"]


class LabelledGauge(_Metric):
    """Gauges with labels read together at scrape time: `source()` returns {label values: value}
    (one sample per GPU, say). No samples is a valid answer: the family is still declared."""

    kind = "gauge"

    def __init__(self, name, documentation, labelnames: Iterable[str], source: Callable[[], dict]):
        super().__init__(name, documentation, labelnames)
        self._source = source

    def samples(self) -> list[str]:
        try:
            values = self._source()
        except Exception:
            return []
        return [f"{self.name}{_labels(self.labelnames, tuple(map(str, key)))} {_number(float(v))}"
                for key, v in sorted(values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, documentation, buckets: Iterable[float] = LATENCY_BUCKETS):
        super().__init__(name, documentation)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last slot is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect_left(self.buckets, value)] += 1
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    def samples(self) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        lines, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), counts):
            running += n
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        lines += [f"{self.name}_sum {_number(total)}", f"{self.name}_count {count}"]
        return lines


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self):
        self._metrics: dict[str, _Metric] = {}

    def add(self, metric: _Metric):
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def get(self, name: str) -> _Metric:
        return self._metrics[name]

    def names(self) -> list[str]:
        return list(self._metrics)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class ServingMetrics:
    """The serving metrics of DESIGN.md in one registry, fed by an event bus (`bus=` or `attach(bus)`):
    finished requests fill the counters and latency histograms, engine steps the batch histograms and the
    queue/KV gauges, replica counts and scale decisions the fleet gauges. Gauges given a callable
    (`running=`, `waiting=`, `kv_usage=`) read it at scrape time instead: exact even when the engine idles.
    Device gauges read NVML at scrape time; without NVML the GPU families are declared with no samples and
    the CPU fallback (process RSS, machine CPU utilisation) carries the memory story."""

    def __init__(self, bus=None, *, running: Callable[[], float] | None = None,
                 waiting: Callable[[], float] | None = None, kv_usage: Callable[[], float] | None = None):
        from .devices import DeviceProbe, gpu_readings

        probe = DeviceProbe()
        r = self.registry = Registry()
        self.running = r.add(Gauge("labkit:num_requests_running", "Requests in the running batch.", running))
        self.waiting = r.add(Gauge("labkit:num_requests_waiting", "Requests waiting to be scheduled.", waiting))
        self.kv_usage = r.add(Gauge("labkit:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0 to 1).",
                                    kv_usage))
        self.prompt_tokens = r.add(Counter("labkit:prompt_tokens_total", "Prompt tokens processed."))
        self.generation_tokens = r.add(Counter("labkit:generation_tokens_total", "Tokens generated."))
        self.prefix_queries = r.add(Counter("labkit:prefix_cache_queries_total", "Prompt tokens looked up in the "
                                            "prefix cache."))
        self.prefix_hits = r.add(Counter("labkit:prefix_cache_hits_total", "Prompt tokens found in the prefix "
                                         "cache (their keys and values were not computed again)."))
        self.success = r.add(Counter("labkit:request_success_total", "Finished requests by finish reason.",
                                     ("finished_reason",)))
        self.errors = r.add(Counter("labkit:request_errors_total", "Requests answered with an HTTP error.",
                                    ("status",)))
        self.ttft = r.add(Histogram("labkit:time_to_first_token_seconds", "Time to first token."))
        self.itl = r.add(Histogram("labkit:inter_token_latency_seconds", "Time between consecutive tokens."))
        self.e2e = r.add(Histogram("labkit:e2e_request_latency_seconds", "End-to-end request latency."))
        self.queue = r.add(Histogram("labkit:request_queue_time_seconds", "Time spent waiting to be scheduled."))
        self.batch_size = r.add(Histogram("labkit:batch_size", "Requests per engine step.", buckets=BATCH_BUCKETS))
        self.step_tokens = r.add(Histogram("labkit:iteration_tokens_total", "Tokens (prompt and decode) per "
                                           "engine step.", buckets=STEP_TOKEN_BUCKETS))
        self.embed_batch = r.add(Histogram("labkit:embedding_batch_size", "Texts per encoder call of the dynamic "
                                           "batcher.", buckets=(1, 2, 4, 8, 16, 32, 64, 128)))
        r.add(LabelledGauge("labkit:gpu_utilization_perc", "GPU utilisation (0 to 100), per device (NVML).",
                            ("gpu",), lambda: {(g.index,): g.utilization_perc for g in gpu_readings()}))
        r.add(LabelledGauge("labkit:gpu_memory_used_bytes", "GPU memory in use, per device (NVML).", ("gpu",),
                            lambda: {(g.index,): g.memory_used_bytes for g in gpu_readings()}))
        r.add(LabelledGauge("labkit:gpu_memory_total_bytes", "GPU memory in all, per device (NVML).", ("gpu",),
                            lambda: {(g.index,): g.memory_total_bytes for g in gpu_readings()}))
        r.add(Gauge("labkit:process_resident_memory_bytes", "Resident memory of this process.",
                    probe.process_resident_bytes))
        r.add(Gauge("labkit:cpu_utilization_perc", "Machine CPU utilisation since the last scrape (0 to 100).",
                    probe.cpu_utilization_perc))
        self.replicas = r.add(Gauge("labkit:replicas", "Healthy replicas serving (router/autoscaler).",
                                    initial=None))
        self.replicas_desired = r.add(Gauge("labkit:replicas_desired", "Replicas the autoscaler wants.",
                                            initial=None))
        self.scale_decisions = r.add(Counter("labkit:scale_decisions_total", "Autoscaler decisions that changed "
                                             "the replica count, by direction.", ("direction",)))
        self._live = {"running": running is not None, "waiting": waiting is not None, "kv": kv_usage is not None}
        if bus is not None:
            self.attach(bus)

    def attach(self, bus):
        """Subscribe to `bus`; returns the unsubscribe."""
        from .events import QueueDepth, ReplicaCount, RequestFinished, ScaleDecision, StepStats

        return bus.subscribe(self.record, RequestFinished, StepStats, QueueDepth, ReplicaCount, ScaleDecision)

    def record(self, event) -> None:
        """One event from the bus (on the publisher's thread: counters and histograms only)."""
        from .events import QueueDepth, ReplicaCount, RequestFinished, ScaleDecision, StepStats

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
        elif isinstance(event, ReplicaCount):
            self.replicas.set(event.replicas)
            self.replicas_desired.set(event.desired)
        elif isinstance(event, ScaleDecision) and event.desired != event.current:
            self.scale_decisions.inc(direction="up" if event.desired > event.current else "down")
            self.replicas_desired.set(event.desired)

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
        a client that hung up, a timeout, shutdown) counts, but its timings stay out of the latency histograms.
        `cached_tokens` (None if it never reached the batch) feeds the prefix-cache counters."""
        self.prompt_tokens.inc(prompt_tokens)
        if cached_tokens is not None:
            self.prefix_queries.inc(prompt_tokens)
            self.prefix_hits.inc(cached_tokens)
        self.generation_tokens.inc(output_tokens)
        self.success.inc(finished_reason=finish_reason)
        if finish_reason == "abort":
            return
        for histogram, value in ((self.queue, queue_s), (self.ttft, ttft_s), (self.e2e, e2e_s)):
            if value is not None:
                histogram.observe(value)
        for gap in itl_s:
            self.itl.observe(gap)

    def render(self) -> str:
        return self.registry.render()

    def metric_names(self) -> list[str]:
        """Every family this registry declares (a Grafana query may only name these)."""
        return self.registry.names()
