"""labkit.monitor.percentiles: numpy's percentile for raw values, Prometheus's histogram_quantile for buckets."""
from __future__ import annotations

import math
import random

import numpy
import pytest

from labkit.monitor.percentiles import histogram_quantile, percentile

pytestmark = pytest.mark.unit
INF = math.inf


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, 1000])
def test_percentile_is_numpys_default_on_random_data(size):
    rng = random.Random(size)
    values = [rng.lognormvariate(0, 1) for _ in range(size)]
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert percentile(values, q) == pytest.approx(numpy.percentile(values, 100 * q), rel=1e-12), q


def test_percentile_takes_any_iterable_unsorted_and_is_none_without_values():
    assert percentile(iter([3.0, 1.0, 2.0]), 0.5) == 2.0
    assert percentile((x for x in [10, 0]), 0.25) == 2.5
    assert percentile([], 0.99) is None and percentile(iter(()), 0.5) is None
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        percentile([1.0], 99)  # a percent, not a fraction


# Each expected value below is what Prometheus 2.42's histogram_quantile returned for the same buckets
# (checked with `promtool test rules`; NaN there is None here).
@pytest.mark.parametrize("q, buckets, expected", [
    (0.5, {1: 0, 2: 10, INF: 10}, 1.5),  # interpolated inside (1, 2]
    (0.25, {0.5: 2, 1: 4, INF: 4}, 0.25),  # first bucket with a positive bound: interpolated from 0
    (0.25, {-1: 2, 1: 4, INF: 4}, -1),  # first bucket with a bound <= 0: the bound itself
    (0.0, {0.5: 2, 1: 4, INF: 4}, 0.0),
    (1.0, {0.5: 2, 1: 4, INF: 4}, 1.0),  # the last finite bucket holding the rank
    (0.99, {1: 0, INF: 4}, 1),  # the rank falls in +Inf: the largest finite bound
    (0.5, {1: 5, 2: 3, INF: 6}, 0.6),  # inconsistent counts are made monotonic first
    (0.0, {1: 0, 2: 4, INF: 4}, None),  # 0/0 in an empty first bucket
    (0.5, {1: 0, INF: 0}, None),  # no observations
    (0.5, {1: 2, 2: 4}, None),  # no +Inf bucket
    (0.5, {INF: 4}, None),  # fewer than two buckets
    (0.5, {}, None),
    (1.5, {0.5: 2, 1: 4, INF: 4}, INF),
    (-0.5, {0.5: 2, 1: 4, INF: 4}, -INF),
])
def test_histogram_quantile_matches_prometheus(q, buckets, expected):
    got = histogram_quantile(q, buckets)
    assert got == (expected if expected is None else pytest.approx(expected)), (q, buckets)


def test_histogram_quantile_over_fine_buckets_approaches_the_raw_percentile():
    rng = random.Random(7)
    values = [rng.uniform(0, 10) for _ in range(20_000)]
    bounds = [i / 10 for i in range(1, 101)] + [INF]
    cumulative = {b: sum(v <= b for v in values) for b in bounds}
    for q in (0.5, 0.9, 0.99):
        assert histogram_quantile(q, cumulative) == pytest.approx(percentile(values, q), abs=0.1)
