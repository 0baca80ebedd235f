"""Reading Prometheus text back: parse an exposition, add up several (replicas), and turn two scrapes into
windowed statistics the way PromQL's `rate()` and `histogram_quantile()` would."""
from __future__ import annotations

import math
import re
from collections import defaultdict

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]  # metric name (with _bucket/_sum/_count) -> labels -> value


def parse(text: str) -> Samples:
    """Samples of a text exposition (version 0.0.4), by name then by sorted label pairs."""
    samples: Samples = defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        name, labels, value = match.groups()
        pairs = tuple(sorted((k, v.replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\"))
                             for k, v in _LABEL.findall(labels or "")))
        try:
            samples[name][pairs] = float(value)
        except ValueError:
            continue
    return dict(samples)


def families(text: str) -> set[str]:
    """Metric families a text exposition declares (`# TYPE` lines), whether or not they have samples."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def merge(parsed: list[Samples]) -> Samples:
    """Several replicas as one: values with the same name and labels are added."""
    total: Samples = defaultdict(dict)
    for samples in parsed:
        for name, series in samples.items():
            for labels, value in series.items():
                total[name][labels] = total[name].get(labels, 0.0) + (0.0 if math.isnan(value) else value)
    return dict(total)


def value(samples: Samples, name: str) -> float | None:
    """The sum over every label set of `name`, or None when it is absent."""
    series = samples.get(name)
    return None if not series else sum(series.values())


def increase(new: Samples, old: Samples | None, name: str) -> float | None:
    """How much a counter grew between two scrapes (a reset, e.g. a restarted server, counts from zero)."""
    now = value(new, name)
    if now is None:
        return None
    before = value(old, name) if old is not None else 0.0
    before = before or 0.0
    return now - before if now >= before else now


def buckets(samples: Samples, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name`, summed over any other labels: {upper bound: count}."""
    out: dict[float, float] = defaultdict(float)
    for labels, count in samples.get(f"{name}_bucket", {}).items():
        le = dict(labels).get("le")
        if le is not None:
            out[math.inf if le == "+Inf" else float(le)] += count
    return dict(out)


def bucket_increase(new: Samples, old: Samples | None, name: str) -> dict[float, float]:
    now, before = buckets(new, name), buckets(old, name) if old is not None else {}
    if any(now.get(le, 0.0) < count for le, count in before.items()):  # a reset
        before = {}
    return {le: count - before.get(le, 0.0) for le, count in now.items()}


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """histogram_quantile(q, ...): linear interpolation inside the bucket where the rank falls; the largest
    finite bound when it falls in +Inf. None when there are no observations."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    total = cumulative[bounds[-1]]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
