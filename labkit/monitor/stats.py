"""Rolling-window statistics over the event bus, and the `Snapshot` every view draws.

`RollingStats` subscribes to a bus and, per event, only appends a tuple to a window (O(1), under an
uncontended lock). The work — evicting old entries, sorting for percentiles, dividing for rates — happens
when someone reads a `snapshot()`, about once a second, never on the engine's thread.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .devices import MemoryReading
from .events import Event, EventBus, QueueDepth, ReplicaCount, RequestFinished, StepStats, now
from .percentiles import percentile, tail, tail_name
from .slo import PHASES, SLO

MAX_WINDOW_ENTRIES = 200_000  # a hard bound on memory whatever the traffic


@dataclass(frozen=True)
class Summary:
    """A distribution over the window: how many values, their mean and percentiles (seconds). None: no data.
    Below 20 values p95 is their maximum, below 100 so is p99: `name(q)` says which a view should print."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        if not values:
            return cls()
        ordered = sorted(values)  # once: percentile's own sort of sorted input is a linear pass
        return cls(len(ordered), statistics.fmean(ordered), percentile(ordered, 0.50), tail(ordered, 0.95).value,
                   tail(ordered, 0.99).value)

    def name(self, q: float) -> str:
        """What the `q` figure of these `count` values honestly is: "p95", "p99", or "max" (`tail_name`)."""
        return tail_name(self.count, q)


@dataclass(frozen=True)
class Goodput:
    """Finished requests over the window judged against `slo` (cancelled ones are not judged): how many met
    every SLO, and how many missed, by the phase that broke them. Counts are floats when read from counters."""

    slo: SLO = SLO()
    requests_per_s: float | None = None  # requests that met every SLO, per second
    judged: float = 0
    good: float = 0
    missed: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))

    @property
    def fraction(self) -> float | None:
        """Share of the judged requests that met every SLO; None without any."""
        return self.good / self.judged if self.judged else None


@dataclass(frozen=True)
class Snapshot:
    """The monitor's statistics at one moment, over the last `window_s` seconds. Local and remote sources
    produce the same shape; a field is None when the source cannot know it yet (no traffic, one scrape)."""

    t: float  # wall-clock time (time.time()) of the reading
    window_s: float  # the span the rates and distributions cover (shorter right after start)
    requests_per_s: float | None = None  # requests finished per second
    tokens_per_s: float | None = None  # output tokens generated per second
    latency: Summary = field(default_factory=Summary)  # end-to-end request latency
    ttft: Summary = field(default_factory=Summary)  # time to first token
    itl: Summary = field(default_factory=Summary)  # inter-token latency
    queue: Summary = field(default_factory=Summary)  # time waiting before first scheduled
    batch_size: float | None = None  # mean requests per engine step
    running: float | None = None  # requests in the running batch now
    waiting: float | None = None  # requests queued now
    kv_usage: float | None = None  # fraction of KV-cache pages in use now (0 to 1)
    replicas: float | None = None  # healthy replicas (router/autoscaler), when published
    goodput: Goodput = field(default_factory=Goodput)  # requests within the SLOs (all of them when none is set)
    requests_total: int = 0  # finished requests since the source started watching
    tokens_total: int = 0  # output tokens since the source started watching
    memory: MemoryReading | None = None
    source: str = ""  # what was read: "in-process" or the URL(s)
    notes: tuple[str, ...] = ()  # caveats, e.g. "percentiles interpolated from histogram buckets"


class RollingStats:
    """Windowed statistics of what a bus carries. Subscribe with `stats.attach(bus)` (returns the
    unsubscribe), or feed events by hand with `stats.record(event)`."""

    def __init__(self, window_s: float = 30.0, slo: SLO = SLO()):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self.slo = slo  # what a snapshot's goodput is judged against; `snapshot(slo=...)` re-judges the window
        self._lock = threading.Lock()
        # (t, e2e, ttft, queue, output_tokens, itl gaps) per finished request; (t, batch, output_tokens) per step
        self._finished: deque[tuple] = deque(maxlen=MAX_WINDOW_ENTRIES)
        self._steps: deque[tuple] = deque(maxlen=MAX_WINDOW_ENTRIES)
        self._gauges: dict[str, float] = {}
        self._requests_total = 0
        self._tokens_total = 0
        self.started = now()

    def attach(self, bus: EventBus):
        return bus.subscribe(self.record, RequestFinished, StepStats, QueueDepth, ReplicaCount)

    def record(self, event: Event) -> None:
        """Called on the publisher's thread: append and return."""
        if isinstance(event, StepStats):
            with self._lock:
                self._steps.append((event.t, event.batch_size, event.output_tokens))
                self._gauges.update(running=event.running, waiting=event.waiting, kv_usage=event.kv_usage)
        elif isinstance(event, RequestFinished):
            entry = (event.t, None, None, None, ()) if event.finish_reason == "abort" else \
                (event.t, event.e2e_s, event.ttft_s, event.queue_s, event.itl_s)  # cancelled: counted, not timed
            with self._lock:
                self._finished.append(entry)
                self._requests_total += 1
                self._tokens_total += event.output_tokens
        elif isinstance(event, QueueDepth):
            with self._lock:
                self._gauges.update(running=event.running, waiting=event.waiting)
                if event.kv_usage is not None:
                    self._gauges["kv_usage"] = event.kv_usage
        elif isinstance(event, ReplicaCount):
            with self._lock:
                self._gauges["replicas"] = event.replicas

    def snapshot(self, at: float | None = None, slo: SLO | None = None) -> Snapshot:
        at = now() if at is None else at
        cutoff = at - self.window_s
        with self._lock:
            for window in (self._finished, self._steps):
                while window and window[0][0] < cutoff:
                    window.popleft()
            finished, steps, gauges = list(self._finished), list(self._steps), dict(self._gauges)
            requests_total, tokens_total = self._requests_total, self._tokens_total
        span = max(min(self.window_s, at - self.started), 1e-9)
        return Snapshot(
            t=time.time(), window_s=span,
            requests_per_s=len(finished) / span,
            tokens_per_s=sum(s[2] for s in steps) / span,
            latency=Summary.of([f[1] for f in finished if f[1] is not None]),
            ttft=Summary.of([f[2] for f in finished if f[2] is not None]),
            queue=Summary.of([f[3] for f in finished if f[3] is not None]),
            itl=Summary.of([gap for f in finished for gap in f[4]]),
            batch_size=statistics.fmean(s[1] for s in steps) if steps else None,
            running=gauges.get("running"), waiting=gauges.get("waiting"), kv_usage=gauges.get("kv_usage"),
            replicas=gauges.get("replicas"), requests_total=requests_total, tokens_total=tokens_total,
            goodput=_judge(finished, self.slo if slo is None else slo, span), source="in-process")


def _judge(finished: list[tuple], slo: SLO, span: float) -> Goodput:
    """Goodput of the window's finished requests: (t, e2e, ttft, queue, itl gaps), cancelled ones untimed."""
    missed = dict.fromkeys(PHASES, 0)
    good = judged = 0
    for _, e2e, ttft, queue, itl in finished:
        if e2e is None:  # cancelled
            continue
        judged += 1
        phase = slo.missed_phase(ttft_s=ttft, e2e_s=e2e, itl_s=itl, queue_s=queue)
        if phase is None:
            good += 1
        else:
            missed[phase] += 1
    return Goodput(slo, good / span, judged, good, missed)
