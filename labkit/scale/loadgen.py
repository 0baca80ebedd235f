"""A load generator: open-loop arrivals in a pattern, against any OpenAI-compatible URL (server or router),
recording one `RequestResult` per request for the notebooks' plots and the benchmark report.

    result = run_load(url, LoadPattern("poisson", rate=8, duration_s=10))
    result.summary()        # ok / errors, latency p50 and p99, requests per replica
    run = start_load(url, [LoadPattern("ramp", rate=12, duration_s=20), LoadPattern("ramp", low=12, rate=0, duration_s=20)])
    run.results             # grows while it runs (plot it live); run.wait() returns the LoadResult

Patterns (requests per second over time): `constant` (evenly spaced at `rate`), `poisson` (random
arrivals averaging `rate`), `ramp` (linear from `low` to `rate`), `step` (`low`, then `rate` from
`step_at` of the way through), `burst` (`low`, with `rate` for `burst_s` every `burst_every_s`).
Arrivals are open-loop: a slow server does not slow the sender down, so queues show up as latency.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from ..monitor.percentiles import percentile

PATTERNS = ("constant", "poisson", "ramp", "step", "burst")


@dataclass(frozen=True)
class LoadPattern:
    pattern: str = "constant"
    rate: float = 4.0  # requests per second (the peak, for ramp/step/burst)
    duration_s: float = 10.0
    low: float = 0.0  # ramp's start, step's first level, burst's baseline
    step_at: float = 0.5  # step: fraction of the duration at which the rate jumps
    burst_every_s: float = 5.0
    burst_s: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown load pattern {self.pattern!r}; choose one of: {', '.join(PATTERNS)}")
        if self.rate < 0 or self.low < 0 or self.duration_s <= 0:
            raise ValueError("LoadPattern: rates must be 0 or more and the duration positive")

    def rate_at(self, t: float) -> float:
        if self.pattern == "ramp":
            return self.low + (self.rate - self.low) * min(1.0, t / self.duration_s)
        if self.pattern == "step":
            return self.rate if t >= self.step_at * self.duration_s else self.low
        if self.pattern == "burst":
            return self.rate if (t % self.burst_every_s) < self.burst_s else self.low
        return self.rate

    def arrivals(self) -> list[float]:
        """Send times in seconds from the start of this pattern (deterministic for a given seed)."""
        if self.pattern == "poisson":
            rng, t, times = random.Random(self.seed), 0.0, []
            while self.rate > 0:
                t += rng.expovariate(self.rate)
                if t >= self.duration_s:
                    break
                times.append(t)
            return times
        times, area, dt = [], 0.0, 1e-3
        for k in range(int(self.duration_s / dt)):  # a request each time the integral of the rate passes a whole number
            t = (k + 0.5) * dt
            area += self.rate_at(t) * dt
            if area >= len(times) + 1 - 1e-9:
                times.append(round(t, 6))
        return times


@dataclass(frozen=True)
class RequestResult:
    index: int
    scheduled_s: float  # when it was due, seconds from the start of the load
    sent_s: float  # when it was sent
    latency_s: float  # until the last byte, or until the error
    status: int  # HTTP status; 0 when no response came (connection failed, timed out)
    ttft_s: float | None = None  # streamed requests: until the first token event
    replica: str | None = None  # the router's X-Labkit-Replica header
    error: str | None = None
    tag: str | None = None  # the third item of what the request maker returned, if any (e.g. "short"/"long")

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


class LoadResult:
    def __init__(self, url: str, results: list[RequestResult], wall_s: float):
        self.url, self.results, self.wall_s = url, sorted(results, key=lambda r: r.index), wall_s

    def summary(self, tag: str | None = None) -> dict:
        """Counts and percentiles, over every request or over those with `tag`."""
        results = [r for r in self.results if tag is None or r.tag == tag]
        ok = [r for r in results if r.ok]
        latencies = [r.latency_s for r in ok]
        return {"requests": len(results), "ok": len(ok), "errors": len(results) - len(ok),
                "statuses": dict(Counter(r.status for r in results)),
                "latency_p50_s": percentile(latencies, 0.5), "latency_p99_s": percentile(latencies, 0.99),
                "ttft_p50_s": percentile([r.ttft_s for r in ok if r.ttft_s is not None], 0.5),
                "requests_per_s": len(ok) / self.wall_s if self.wall_s else 0.0,
                "per_replica": dict(sorted(Counter(r.replica for r in ok if r.replica).items()))}

    def rows(self) -> list[dict]:
        """One dict per request (for a DataFrame or a plot)."""
        return [{**r.__dict__, "ok": r.ok} for r in self.results]

    def __repr__(self) -> str:
        s = self.summary()
        p50 = f"{s['latency_p50_s']:.3f}" if s["latency_p50_s"] is not None else "-"
        return f"LoadResult({self.url}: {s['ok']}/{s['requests']} ok, p50 {p50} s)"


RequestMaker = Callable[[int, random.Random], tuple]  # (path, body) or (path, body, tag)


def default_request(i: int, rng: random.Random) -> tuple[str, dict]:
    return "/v1/completions", {"prompt": f"Request {i}: the weather today is", "max_tokens": 8, "temperature": 0}


class LoadRun:
    """A load in progress in a background thread; `results` grows as requests finish."""

    def __init__(self, url: str, patterns: Sequence[LoadPattern], request: RequestMaker, timeout_s: float,
                 max_in_flight: int, headers: dict | None, on_result: Callable[[RequestResult], None] | None):
        self.url, self.results = url.rstrip("/"), []
        self.t0 = time.monotonic()
        offset, schedule = 0.0, []
        for pattern in patterns:
            schedule += [offset + t for t in pattern.arrivals()]
            offset += pattern.duration_s
        self.schedule, self.duration_s = schedule, offset
        self._request, self._timeout, self._headers, self._on_result = request, timeout_s, headers or {}, on_result
        self._gate_size, self._rng = max_in_flight, random.Random(patterns[0].seed if patterns else 0)
        self._done = threading.Event()
        self._stopped = threading.Event()
        self._wall = 0.0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="labkit-load", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def stop(self) -> None:
        """Send nothing more; requests already sent still finish (see `wait`)."""
        self._stopped.set()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def wait(self, timeout: float | None = None) -> LoadResult:
        self._thread.join(timeout)
        return LoadResult(self.url, list(self.results), self._wall)

    async def _main(self):
        gate = asyncio.Semaphore(self._gate_size)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=self._gate_size)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self._timeout), limits=limits) as client:
            tasks = []
            for index, due in enumerate(self.schedule):
                delay = self.t0 + due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._stopped.is_set():
                    break
                path, body, *tag = self._request(index, self._rng)
                tasks.append(asyncio.create_task(self._one(client, gate, index, due, path, body, *tag)))
            await asyncio.gather(*tasks)
        self._wall = time.monotonic() - self.t0
        self._done.set()

    async def _one(self, client, gate, index, due, path, body, tag=None):
        async with gate:
            sent = time.monotonic()
            status, ttft, replica, error = 0, None, None, None
            try:
                async with asyncio.timeout(self._timeout):
                    async with client.stream("POST", self.url + path, json=body, headers=self._headers) as response:
                        status, replica = response.status_code, response.headers.get("x-labkit-replica")
                        if status != 200:
                            await response.aread()
                            error = _error_message(response)
                        elif body.get("stream"):
                            done = False
                            async for line in response.aiter_lines():
                                if line.startswith("data:") and ttft is None:
                                    ttft = time.monotonic() - sent
                                if line.startswith("data:") and '"error"' in line[:20]:
                                    error = json.loads(line[5:])["error"].get("message", "stream error")
                                done = done or line.strip() == "data: [DONE]"
                            if not done and error is None:
                                error = "the stream ended without data: [DONE]"

                        else:
                            await response.aread()
            except TimeoutError:
                error = f"timed out after {self._timeout:g} s"
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
            result = RequestResult(index, due, sent - self.t0, time.monotonic() - sent, status, ttft, replica, error, tag)
            self.results.append(result)
            if self._on_result is not None:
                self._on_result(result)


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def start_load(url: str, patterns: LoadPattern | Sequence[LoadPattern], *, request: RequestMaker | None = None,
               timeout_s: float = 60.0, max_in_flight: int = 256, headers: dict | None = None,
               on_result: Callable[[RequestResult], None] | None = None) -> LoadRun:
    """Start sending load to `url` in the background (patterns run back to back); see `LoadRun`."""
    patterns = [patterns] if isinstance(patterns, LoadPattern) else list(patterns)
    return LoadRun(url, patterns, request or default_request, timeout_s, max_in_flight, headers, on_result)


def run_load(url: str, patterns: LoadPattern | Sequence[LoadPattern], **options) -> LoadResult:
    """Send load to `url` and return every request's result once the last one ends (see `start_load`)."""
    return start_load(url, patterns, **options).wait()
