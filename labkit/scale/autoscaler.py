"""The autoscaler: a reconcile loop that reads load signals and sets the pool's replica count.

All of the policy is in one pure function, `decide(history, config, now) -> desired replicas`, unit-tested
over scripted load traces. `history` is the samples since the pool last changed size (each a `Signals`):

- each sample asks for `ceil(in-flight / target_ongoing_requests)` replicas (Ray Serve's
  `target_ongoing_requests`), and at least one more than now when the waiting requests per replica pass
  `max_queue_per_replica`, or the p99 latency passes `latency_slo_p99_s`;
- the pool grows only when every sample of the last `upscale_delay_s` asked for more (to the smallest of
  their asks), and shrinks only when every sample of the last `downscale_delay_s` asked for fewer (to the
  largest of their asks), so a short spike or lull changes nothing and it never flaps;
- the answer is kept within [min_replicas, max_replicas] at once, whatever the delays.

`Autoscaler` runs `decide` every `interval_s` in a thread and publishes every decision on the event bus
(`ScaleDecision`) and as `labkit:replicas` on the router's /metrics.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from ..config import ScaleConfig
from ..monitor import scrape
from ..monitor.events import EventBus, QueueDepth, ScaleDecision


@dataclass(frozen=True)
class Signals:
    """One sample of the load on a pool."""
    t: float  # monotonic seconds
    replicas: int  # the pool's current size (its target, counting replicas still starting)
    ongoing: float  # requests in flight across the pool (running + waiting)
    waiting: float = 0.0  # of which waiting for a batch slot
    p99_s: float | None = None  # recent p99 end-to-end latency, if known


def wanted(sample: Signals, config: ScaleConfig) -> int:
    """How many replicas one sample asks for, before delays and bounds."""
    ask = math.ceil(sample.ongoing / config.target_ongoing_requests - 1e-9)
    if config.max_queue_per_replica is not None and sample.waiting > config.max_queue_per_replica * max(sample.replicas, 1):
        ask = max(ask, sample.replicas + 1)
    if config.latency_slo_p99_s is not None and sample.p99_s is not None and sample.p99_s > config.latency_slo_p99_s:
        ask = max(ask, sample.replicas + 1)
    return ask


def decide(history: Sequence[Signals], config: ScaleConfig, now: float) -> int:
    """The replica count to have now, given the samples since the last change (oldest first)."""
    if not history:
        raise ValueError("decide needs at least one sample")
    current = history[-1].replicas
    clamp = lambda n: max(config.min_replicas, min(config.max_replicas, n))  # noqa: E731
    if current != clamp(current):
        return clamp(current)

    def sustained(delay: float, direction: int) -> int | None:
        window = [s for s in history if s.t >= now - delay and s.replicas == current]
        covered = history[0].t <= now - delay and all(s.replicas == current for s in history)
        asks = [clamp(wanted(s, config)) for s in window]
        if not covered or not asks or any((a - current) * direction <= 0 for a in asks):
            return None
        return min(asks) if direction > 0 else max(asks)

    for delay, direction in ((config.upscale_delay_s, +1), (config.downscale_delay_s, -1)):
        change = sustained(delay, direction)
        if change is not None:
            return change
    return current


def scrape_queue(client: httpx.Client, urls: Sequence[str]) -> tuple[float, float]:
    """Sum of `labkit:num_requests_running` and `_waiting` over replicas' /metrics, every model_name included
    (a replica that does not answer with an exposition counts 0)."""
    running = waiting = 0.0
    for url in urls:
        try:
            samples = scrape.parse(client.get(url + "/metrics").text)
        except (httpx.HTTPError, ValueError):
            continue
        running += scrape.value(samples, "labkit:num_requests_running") or 0.0
        waiting += scrape.value(samples, "labkit:num_requests_waiting") or 0.0
    return running, waiting


class Autoscaler:
    """Reconciles `pool`'s size with `decide` every `config.interval_s`, reading the router's in-flight
    counts and latencies and the replicas' queue gauges."""

    def __init__(self, pool, router, config: ScaleConfig | None = None, *, bus: EventBus | None = None):
        self.pool, self.router = pool, router
        self.config = config or pool.config
        self.bus = bus or getattr(router, "bus", None) or EventBus()
        self.history: list[Signals] = []
        self.last: Signals | None = None  # the latest sample (for live plots)
        self.decisions: list[ScaleDecision] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=httpx.Timeout(0.5))

    def sample(self, now: float | None = None) -> Signals:
        now = time.monotonic() if now is None else now
        running, waiting = scrape_queue(self._http, self.pool.urls())
        ongoing = max(float(self.router.in_flight(self.pool)), running + waiting)
        p99 = self.router.p99_latency(window_s=max(5.0, self.config.upscale_delay_s), now=now) \
            if self.config.latency_slo_p99_s is not None else None
        self.bus.publish(QueueDepth(source="autoscaler", running=int(running), waiting=int(waiting)))
        return Signals(t=now, replicas=self.pool.target, ongoing=ongoing, waiting=waiting, p99_s=p99)

    def tick(self, now: float | None = None) -> int:
        """Take one sample, decide, and resize the pool if the decision differs. Returns the decision."""
        signals = self.last = self.sample(now)
        self.history = [s for s in self.history if s.replicas == signals.replicas and
                        s.t >= signals.t - 2 * max(self.config.upscale_delay_s, self.config.downscale_delay_s) - 1]
        self.history.append(signals)
        desired = decide(self.history, self.config, signals.t)
        if desired != signals.replicas:
            reason = (f"in flight {signals.ongoing:.0f} (target {self.config.target_ongoing_requests:g} per replica), "
                      f"waiting {signals.waiting:.0f}" + (f", p99 {signals.p99_s:.2f} s" if signals.p99_s else ""))
            decision = ScaleDecision(source="autoscaler", t=signals.t, current=signals.replicas, desired=desired,
                                     reason=reason)
            self.decisions.append(decision)
            self.bus.publish(decision)
            self.pool.scale_to(desired)
            self.history = []
        return desired

    def start(self) -> Autoscaler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="labkit-autoscaler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self.tick()
            except Exception as err:  # a failed tick must not end autoscaling
                import sys
                print(f"labkit: autoscaler tick failed: {err!r}", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._http.close()
