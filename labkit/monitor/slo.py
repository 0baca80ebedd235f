"""Service-level objectives and goodput: did a finished request meet every SLO, and if not, which phase broke it.

One judgement serves the live counters (`labkit serve --slo-ttft-ms ...` → `labkit:goodput_requests_total`),
the Dashboard's sliders (re-judging the recent window) and `labkit bench serve`'s offline goodput.

A request's life has three phases: waiting in the queue, computing its prompt (prefill, up to the first token)
and generating (decode). A miss is blamed on the phase in which a budget ran out: TTFT includes the queue, so a
request that waited longer than the TTFT budget missed in the queue, otherwise in prefill; an end-to-end budget
runs out in whichever phase was under way when it did; the inter-token SLO (on the request's mean gap, vLLM's
TPOT) can only break in decode. With several misses the earliest phase counts: that is where it went wrong.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PHASES = ("queue", "prefill", "decode")


@dataclass(frozen=True)
class SLO:
    """Latency targets in milliseconds; None leaves that one unchecked. With none set, every request is good."""

    ttft_ms: float | None = None
    itl_ms: float | None = None  # on each request's mean inter-token latency
    e2e_ms: float | None = None

    def __post_init__(self):
        for name in ("ttft_ms", "itl_ms", "e2e_ms"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SLO {name} must be a positive number of milliseconds, got {value!r}")

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.itl_ms, self.e2e_ms))

    def targets_s(self) -> dict[str, float]:
        """{"ttft"|"itl"|"e2e": seconds} for the SLOs that are set."""
        return {name: ms / 1000 for name, ms in (("ttft", self.ttft_ms), ("itl", self.itl_ms), ("e2e", self.e2e_ms))
                if ms is not None}

    def missed_phase(self, *, ttft_s: float | None, e2e_s: float | None, itl_s: Sequence[float] = (),
                     queue_s: float | None = None) -> str | None:
        """None when the request met every SLO, else the phase ("queue", "prefill", "decode") that broke it.
        A timing the request never reached (no first token) misses any SLO that needs it. Without `queue_s`
        (a client's view) a TTFT miss is blamed on prefill."""
        misses = []
        if self.ttft_ms is not None:
            budget = self.ttft_ms / 1000
            if ttft_s is None or ttft_s > budget:
                misses.append("queue" if queue_s is not None and queue_s > budget else "prefill")
        if self.itl_ms is not None and itl_s and math.fsum(itl_s) / len(itl_s) > self.itl_ms / 1000:
            misses.append("decode")
        if self.e2e_ms is not None:
            budget = self.e2e_ms / 1000
            if e2e_s is None or e2e_s > budget:
                if queue_s is not None and queue_s > budget:
                    misses.append("queue")
                elif ttft_s is None or ttft_s > budget:
                    misses.append("prefill")
                else:
                    misses.append("decode")
        return min(misses, key=PHASES.index) if misses else None

    def met(self, **timings) -> bool:
        return self.missed_phase(**timings) is None
