"""Several replicas' /metrics as one fleet: what the router adds to its own exposition at scrape time.

Counters and histograms add up (tokens, requests, goodput, latency buckets), and so do the gauges that count
something per process (running, waiting, resident memory); the other gauges (fractions such as KV-cache use,
device-wide readings that every replica on one GPU reports alike) take the largest replica's value.
`_created` timestamps are dropped (scrape.metric_families): a sum of creation times means nothing.
"""
from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from .scrape import metric_families

SUMMED_GAUGES = frozenset({"labkit:num_requests_running", "labkit:num_requests_waiting",
                           "labkit:process_resident_memory_bytes"})


def combine(texts: list[str]) -> list[Metric]:
    """The families of several expositions combined sample by sample (same name and labels); a text that is
    not an exposition is skipped."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        try:
            parsed = metric_families(text)
        except ValueError:  # not an exposition (a stand-in replica, a proxy's error page): left out
            continue
        for family in parsed:
            families.setdefault(family.name, family)
            summed = family.type != "gauge" or family.name in SUMMED_GAUGES
            combined = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                value = 0.0 if math.isnan(sample.value) else sample.value
                before = combined.get(key)
                combined[key] = value if before is None else (before + value if summed else max(before, value))
    out = []
    for name, family in families.items():
        metric = Metric(name, family.documentation, family.type)
        for (sample_name, labels), value in values[name].items():  # the first replica's order (buckets by le)
            metric.add_sample(sample_name, dict(labels), value)
        out.append(metric)
    return out


class _Fixed:
    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self):
        return self.metrics


def render(texts: list[str]) -> str:
    """The combined exposition in the text format (empty when there is nothing to combine)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(combine(texts)))
    return generate_latest(registry).decode()
