"""Where a dashboard reads its statistics: in-process from an event bus, or remotely from `/metrics`.

Both give the same `Snapshot`, so a panel, the CLI and a notebook do not care which it is:

    source = labkit.monitor.source(server)                     # a ServerHandle, an LLM/AsyncLLM, or an EventBus
    source = labkit.monitor.source("http://127.0.0.1:8000")    # any labkit server or router, or vLLM, over HTTP
    source = labkit.monitor.source(["http://a:8001", "http://b:8002"])  # replicas added up
    source.read().latency.p99
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Protocol

from . import engine_names, scrape
from .devices import DeviceProbe, MemoryReading
from .events import EventBus, now
from .percentiles import histogram_quantile
from .slo import PHASES, SLO
from .stats import Goodput, RollingStats, Snapshot, Summary

DEFAULT_WINDOW_S = 30.0


class Source(Protocol):
    def read(self) -> Snapshot: ...

    def close(self) -> None: ...


class LocalSource:
    """Statistics of an engine or server in this process: a `RollingStats` subscribed to its bus, and the
    device probe (NVML, else process RSS) of this process."""

    def __init__(self, target, window_s: float = DEFAULT_WINDOW_S):
        bus = target if isinstance(target, EventBus) else getattr(target, "bus", None)
        if not isinstance(bus, EventBus):
            raise TypeError(f"cannot monitor a {type(target).__name__}: give a URL, an EventBus, or an object with "
                            f"a .bus (labkit.LLM, labkit.AsyncLLM, the handle labkit.serve returns)")
        self.bus = bus
        config = getattr(getattr(getattr(target, "app", None), "state", None), "config", None)
        self.stats = RollingStats(window_s, slo=getattr(config, "slo", SLO()))  # a served app's own SLOs
        self._probe = DeviceProbe()
        self._unsubscribe = self.stats.attach(bus)

    def read(self) -> Snapshot:
        return _replace(self.stats.snapshot(), memory=self._probe.read())

    @property
    def slo(self) -> SLO:
        """The SLOs goodput is judged against; set it to re-judge the window's requests at the next read."""
        return self.stats.slo

    @slo.setter
    def slo(self, slo: SLO) -> None:
        self.stats.slo = slo

    def close(self) -> None:
        self._unsubscribe()

    def __repr__(self) -> str:
        return f"LocalSource(window {self.stats.window_s:g} s)"


class RemoteSource:
    """Statistics of one or more servers read from their `/metrics`: labkit servers and routers, or vLLM
    (its names read as labkit's, engine_names.py; which engine each URL is, is found on every scrape and
    shown in the snapshot's `source`). Each `read()` scrapes; rates and distributions come from the growth
    of counters and histogram buckets since the oldest scrape inside the window (like PromQL's `rate` and
    `histogram_quantile`), so the first read has gauges but no rates yet. Percentiles are interpolated
    within histogram buckets. Several URLs (replicas) are added up."""

    def __init__(self, urls: str | list[str], window_s: float = DEFAULT_WINDOW_S, timeout_s: float = 2.0):
        import httpx

        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("RemoteSource needs at least one URL")
        self.window_s = window_s
        self._client = httpx.Client(timeout=timeout_s)
        self._history: deque[tuple[float, scrape.Samples]] = deque()
        self._lock = threading.Lock()
        self.engines: list[str | None] = [None] * len(self.urls)  # per URL, as the latest scrape found it

    def scrape(self) -> scrape.Samples:
        """One scrape of every URL, added up. Raises OSError naming the URL that did not answer."""
        import httpx

        parsed = []
        for i, url in enumerate(self.urls):
            target = url.rstrip("/") + "/metrics"
            try:
                response = self._client.get(target)
                response.raise_for_status()
                samples = scrape.parse(response.text)
            except httpx.HTTPError as err:
                raise OSError(f"cannot read {target}: {err}") from None
            except ValueError as err:
                raise OSError(f"cannot read {target}: not a Prometheus exposition ({err})") from None
            self.engines[i] = engine_names.engine_of(samples)
            parsed.append(engine_names.canonical(samples))
        merged = scrape.merge(parsed)
        for name in [n for n in merged if n.endswith("_perc")]:  # fractions: a mean over replicas, not a sum
            means = [m for m in (_mean(p, name) for p in parsed) if m is not None]
            merged[name] = {(): sum(means) / len(means)}
        return merged

    def label(self) -> str:
        """The URLs, each with the engine found there: "http://a:8000 (vLLM)"."""
        return ", ".join(f"{url} ({engine or 'no labkit or vLLM series'})"
                         for url, engine in zip(self.urls, self.engines))

    def read(self) -> Snapshot:
        samples = self.scrape()
        at = now()
        with self._lock:
            self._history.append((at, samples))
            while len(self._history) > 2 and self._history[1][0] <= at - self.window_s:
                self._history.popleft()  # keep one scrape at or beyond the window's start
            base_t, base = self._history[0] if len(self._history) > 1 else (at, None)
        snapshot = snapshot_from_scrapes(samples, base, at - base_t, self.label())
        if engine_names.VLLM in self.engines:
            snapshot = _replace(snapshot, notes=(*snapshot.notes, "vLLM exports no batch size or device memory"))
        return snapshot

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RemoteSource({', '.join(self.urls)}, window {self.window_s:g} s)"


def snapshot_from_scrapes(new: scrape.Samples, old: scrape.Samples | None, span_s: float, label: str) -> Snapshot:
    """A `Snapshot` from two scrapes `span_s` apart (`old` None: only the gauges are known)."""
    windowed = old is not None and span_s > 0

    def rate(name: str) -> float | None:
        grown = scrape.increase(new, old, name) if windowed else None
        return None if grown is None else grown / span_s

    def summary(name: str) -> Summary:
        if not windowed:
            return Summary()
        count = scrape.increase(new, old, f"{name}_count") or 0.0
        if count <= 0:
            return Summary()
        cumulative = scrape.bucket_increase(new, old, name)
        total = scrape.increase(new, old, f"{name}_sum") or 0.0
        # Below 100 observations the 0.99 rank lies in the slowest one's bucket: the p99 estimates their maximum,
        # and Summary.name(0.99) calls it so.
        return Summary(int(count), total / count, *(histogram_quantile(q, cumulative) for q in (0.5, 0.95, 0.99)))

    batch_steps = scrape.increase(new, old, "labkit:batch_size_count") if windowed else None
    batch_size = (scrape.increase(new, old, "labkit:batch_size_sum") / batch_steps) if batch_steps else None
    return Snapshot(
        t=time.time(), window_s=span_s if windowed else 0.0,
        requests_per_s=rate("labkit:request_success_total"), tokens_per_s=rate("labkit:generation_tokens_total"),
        latency=summary("labkit:e2e_request_latency_seconds"), ttft=summary("labkit:time_to_first_token_seconds"),
        itl=summary("labkit:inter_token_latency_seconds"), queue=summary("labkit:request_queue_time_seconds"),
        batch_size=batch_size,
        running=scrape.value(new, "labkit:num_requests_running"),
        waiting=scrape.value(new, "labkit:num_requests_waiting"),
        kv_usage=_mean(new, "labkit:kv_cache_usage_perc"),
        replicas=scrape.value(new, "labkit:replicas"),
        requests_total=int(scrape.value(new, "labkit:request_success_total") or 0),
        tokens_total=int(scrape.value(new, "labkit:generation_tokens_total") or 0),
        goodput=_goodput_from_scrape(new, old, span_s) if windowed else Goodput(),
        memory=_memory_from_scrape(new), source=label,
        notes=("percentiles interpolated from histogram buckets",))


MISSED = "labkit:slo_missed_requests_total"


def _goodput_from_scrape(new: scrape.Samples, old: scrape.Samples | None, span_s: float) -> Goodput:
    """Goodput from the server's own judgement (its counters, against its --slo flags); empty for an engine
    that does not count it (vLLM)."""
    good = scrape.increase(new, old, "labkit:goodput_requests_total")
    if good is None:
        return Goodput()

    def by_label(samples, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in (samples or {}).get(name, {}).items():
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out

    now, before = by_label(new, MISSED, "phase"), by_label(old, MISSED, "phase")
    missed = {phase: max(now.get(phase, 0.0) - before.get(phase, 0.0), 0.0) for phase in PHASES}
    targets = {dict(labels).get("slo"): seconds for labels, seconds in new.get("labkit:slo_target_seconds", {}).items()}
    slo = SLO(**{f"{name}_ms": seconds * 1000 for name, seconds in targets.items()
                 if name in ("ttft", "itl", "e2e") and seconds > 0})
    return Goodput(slo, good / span_s, good + sum(missed.values()), good, missed)


def _mean(samples: scrape.Samples, name: str) -> float | None:
    """The mean over every label set of `name` (a fraction per GPU or per engine), or None when absent."""
    series = samples.get(name)
    return sum(series.values()) / len(series) if series else None


def _memory_from_scrape(samples: scrape.Samples) -> MemoryReading | None:
    used = scrape.value(samples, "labkit:gpu_memory_used_bytes")
    if used is not None:
        return MemoryReading("gpu", used, scrape.value(samples, "labkit:gpu_memory_total_bytes"),
                             _mean(samples, "labkit:gpu_utilization_perc"), "GPU memory (NVML, from /metrics)")
    rss = scrape.value(samples, "labkit:process_resident_memory_bytes")
    if rss is None:
        return None
    return MemoryReading("cpu", rss, None, _mean(samples, "labkit:cpu_utilization_perc"),
                         "server process RSS (no NVML there: CPU fallback)")


def _replace(snapshot: Snapshot, **changes) -> Snapshot:
    from dataclasses import replace

    return replace(snapshot, **changes)


def source(target, window_s: float = DEFAULT_WINDOW_S) -> Source:
    """A source for `target`: a URL or list of URLs (remote), a Source (as it is), or an in-process engine,
    server handle or EventBus (local)."""
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and target and
                                   all(isinstance(t, str) for t in target)):
        return RemoteSource(target, window_s)
    if callable(getattr(target, "read", None)):
        return target
    return LocalSource(target, window_s)


class Watcher:
    """Reads a source every `interval_s` on a background thread and hands each snapshot to `on_snapshot`.
    A failing read goes to `on_error` (the watcher keeps going: a server restarting is not the end).
    `stop()` returns once the thread has ended."""

    def __init__(self, source: Source, on_snapshot, interval_s: float = 1.0, on_error=None):
        self.source = source
        self.on_snapshot = on_snapshot
        self.on_error = on_error
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Watcher:
        if not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="labkit-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def tick(self) -> Snapshot | None:
        """One read and hand-off, on the caller's thread."""
        try:
            snapshot = self.source.read()
        except Exception as err:
            if self.on_error is not None:
                self.on_error(err)
            return None
        self.on_snapshot(snapshot)
        return snapshot

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # a drawing error must not kill the thread silently in a loop: log, go on
                import logging

                logging.getLogger(__name__).exception("monitor watcher: on_snapshot failed")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
