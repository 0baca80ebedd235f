"""A small, dependency-free Prometheus exposition: counters, gauges and histograms with labels.

Names follow DESIGN.md (`labkit:` prefix, after vLLM's). The server feeds these from each finished
request's timings; `render()` writes the text format (version 0.0.4) that Prometheus scrapes.
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
    """A value set directly, or read from `source` at scrape time (queue lengths, KV usage, memory)."""

    kind = "gauge"

    def __init__(self, name, documentation, source: Callable[[], float] | None = None):
        super().__init__(name, documentation)
        self._value = 0.0
        self._source = source

    def set(self, value: float) -> None:
        self._value = float(value)

    def value(self) -> float:
        if self._source is not None:
            try:
                return float(self._source())
            except Exception:  # a probe that fails at scrape time must not break the scrape
                return math.nan
        return self._value

    def samples(self) -> list[str]:
        value = self.value()
        return [f"{self.name} {'NaN' if math.isnan(value) else _number(value)}"]


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

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"


class ServingMetrics:
    """The serving metrics of DESIGN.md in one registry. Gauges read live values through callables."""

    def __init__(self, *, running: Callable[[], float] | None = None, waiting: Callable[[], float] | None = None,
                 kv_usage: Callable[[], float] | None = None):
        from .devices import cpu_reading, gpu_readings, nvml_available

        r = self.registry = Registry()
        r.add(Gauge("labkit:num_requests_running", "Requests in the running batch.", running))
        r.add(Gauge("labkit:num_requests_waiting", "Requests waiting to be scheduled.", waiting))
        r.add(Gauge("labkit:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0 to 1).", kv_usage))
        self.prompt_tokens = r.add(Counter("labkit:prompt_tokens_total", "Prompt tokens processed."))
        self.generation_tokens = r.add(Counter("labkit:generation_tokens_total", "Tokens generated."))
        self.success = r.add(Counter("labkit:request_success_total", "Finished requests by finish reason.",
                                     ("finished_reason",)))
        self.errors = r.add(Counter("labkit:request_errors_total", "Requests answered with an HTTP error.",
                                    ("status",)))
        self.ttft = r.add(Histogram("labkit:time_to_first_token_seconds", "Time to first token."))
        self.itl = r.add(Histogram("labkit:inter_token_latency_seconds", "Time between consecutive tokens."))
        self.e2e = r.add(Histogram("labkit:e2e_request_latency_seconds", "End-to-end request latency."))
        self.queue = r.add(Histogram("labkit:request_queue_time_seconds", "Time spent waiting to be scheduled."))
        self.embed_batch = r.add(Histogram("labkit:embedding_batch_size", "Texts per encoder call of the dynamic "
                                           "batcher.", buckets=(1, 2, 4, 8, 16, 32, 64, 128)))
        if nvml_available():
            r.add(Gauge("labkit:gpu_utilization_perc", "GPU 0 utilisation (0 to 100).",
                        lambda: gpu_readings()[0].utilization_perc))
            r.add(Gauge("labkit:gpu_memory_used_bytes", "GPU 0 memory in use.",
                        lambda: gpu_readings()[0].memory_used_bytes))
        r.add(Gauge("labkit:process_resident_memory_bytes", "Resident memory of this process.",
                    lambda: cpu_reading().process_resident_bytes))
        r.add(Gauge("labkit:cpu_utilization_perc", "Machine CPU utilisation since the last scrape (0 to 100).",
                    lambda: cpu_reading().utilization_perc))

    def record_finished(self, *, finish_reason: str, prompt_tokens: int, output_tokens: int,
                        queue_s: float | None = None, ttft_s: float | None = None,
                        itl_s: Iterable[float] = (), e2e_s: float | None = None) -> None:
        """One finished generation request, from the engine's per-request timings."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        self.success.inc(finished_reason=finish_reason)
        for histogram, value in ((self.queue, queue_s), (self.ttft, ttft_s), (self.e2e, e2e_s)):
            if value is not None:
                histogram.observe(value)
        for gap in itl_s:
            self.itl.observe(gap)

    def render(self) -> str:
        return self.registry.render()
