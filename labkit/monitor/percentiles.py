"""The one definition of a percentile in labkit, for raw values and for Prometheus histograms.

`percentile` is what numpy.percentile computes by default (linear interpolation between the closest ranks);
bench, monitor, router and the load generator all use it, so a "p99" means the same thing everywhere.
`histogram_quantile` is what PromQL's `histogram_quantile()` computes from cumulative bucket counts, so a
percentile read from /metrics matches what Grafana shows for the same window.
`tail_name` says what a tail of so many samples honestly is: the p99 of 30 requests is their maximum, and is
named "max" wherever labkit prints or plots it.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_PRECISION_TOLERANCE = 1e-12  # Prometheus's: relative differences this small between buckets are float noise


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`-quantile (q in [0, 1]) of `values`, interpolated linearly between the closest ranks like
    numpy's default. None when there are no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile must be within [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def histogram_quantile(q: float, cumulative_buckets: Mapping[float, float]) -> float | None:
    """PromQL's `histogram_quantile(q, ...)` over `{upper bound: cumulative count}` (the `le` buckets, +Inf
    included). None wherever Prometheus answers NaN: no observations, no +Inf bucket, fewer than two
    buckets, or q = 0 with an empty first bucket; -inf / +inf for q below 0 / above 1, as Prometheus.

    The rank q * count is found in the first bucket whose count reaches it and interpolated linearly
    inside that bucket; the first bucket starts at 0 when its bound is positive (else its bound is the
    answer); a rank in the +Inf bucket gives the largest finite bound. Counts are made monotonic first."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(cumulative_buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    counts = _monotonic([cumulative_buckets[b] for b in bounds])
    observations = counts[-1]
    if observations == 0:
        return None
    rank = q * observations
    b = bisect.bisect_left(counts, rank, hi=len(counts) - 1)  # the first bucket with count >= rank
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, count = 0.0, counts[b]
    if b > 0:
        start, count, rank = bounds[b - 1], count - counts[b - 1], rank - counts[b - 1]
    if count == 0:  # only q = 0 over an empty first bucket: 0/0, NaN in Prometheus
        return None
    return start + (bounds[b] - start) * (rank / count)


def _monotonic(counts: list[float]) -> list[float]:
    """Prometheus's repair of bucket counts before the search: float noise below its tolerance is evened
    out, then any decrease (inconsistent data) is lifted to the running maximum."""
    fixed, previous = [counts[0]], counts[0]
    for count in counts[1:]:
        if count not in (previous, 0) and abs(count - previous) / count <= _PRECISION_TOLERANCE:
            count = previous
        else:
            previous = count
        fixed.append(count)
    highest = fixed[0]
    for i, count in enumerate(fixed):
        highest = max(highest, count)
        fixed[i] = highest
    return fixed


@dataclass(frozen=True)
class Tail:
    name: str  # "p99", or "max" when there are too few samples for that quantile to mean anything else
    value: float | None


def tail_name(samples: int, q: float = 0.99) -> str:
    """"p99" (etc.) when at least one of `samples` lies beyond the quantile (n * (1 - q) >= 1), else "max":
    the p99 of 30 samples is their maximum, whatever a formula interpolates."""
    return f"p{q * 100:g}" if samples * (1 - q) >= 1 - 1e-9 else "max"


def tail(values: Sequence[float], q: float = 0.99) -> Tail:
    """The `q` quantile of `values` under its honest name (`tail_name`): the maximum below enough samples."""
    name = tail_name(len(values), q)
    if not values:
        return Tail(name, None)
    return Tail(name, max(values) if name == "max" else percentile(values, q))
