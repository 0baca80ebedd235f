"""Reading Prometheus text back: parse an exposition (with prometheus_client's parser), add up several
(replicas), and turn two scrapes into windowed statistics the way PromQL's `rate()` and `histogram_quantile()`
would (the quantile itself is `percentiles.histogram_quantile`)."""
from __future__ import annotations

import math
from collections import defaultdict

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]  # metric name (with _bucket/_sum/_count) -> labels -> value


def _is_created(name: str) -> bool:
    # prometheus_client writes each counter's and histogram's creation time as `<name>_created` (a family of
    # its own in the classic text format): a timestamp, never something to add into a count.
    return name.endswith("_created")


def metric_families(text: str) -> list[Metric]:
    """The families of a text exposition as prometheus_client parses them, `_created` timestamps left out.
    Raises ValueError when `text` is not a Prometheus exposition."""
    out = []
    for family in text_string_to_metric_families(text):
        if not _is_created(family.name):
            family.samples = [s for s in family.samples if not _is_created(s.name)]
            out.append(family)
    return out


def parse(text: str) -> Samples:
    """Samples of a text exposition, by name then by sorted label pairs (`_created` timestamps left out).
    Raises ValueError when `text` is not a Prometheus exposition."""
    samples: Samples = defaultdict(dict)
    for family in metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = float(sample.value)
    return dict(samples)


def families(text: str) -> set[str]:
    """Metric families a text exposition declares, whether or not they have samples, named as
    prometheus_client names them (a counter without its `_total`)."""
    return {family.name for family in metric_families(text)}


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
