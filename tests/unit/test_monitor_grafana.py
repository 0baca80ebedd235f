"""monitoring/: the Grafana dashboard is what generate.py builds, and it only queries metrics labkit exports;
the scrape config is sound."""
from __future__ import annotations

import importlib.util
import json
import re
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from labkit.monitor import ServingMetrics
from labkit.monitor.metrics import FleetMetrics

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2] / "monitoring"
METRIC = re.compile(r"labkit:[a-zA-Z0-9_:]+")


def generator():
    spec = importlib.util.spec_from_file_location("labkit_grafana_generate", ROOT / "grafana" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict:
    return json.loads((ROOT / "grafana" / "labkit.json").read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in committed()["panels"] for target in panel["targets"]]


def exported_series() -> set[str]:
    """Every sample name a labkit server's or router's /metrics can carry."""
    fleet = FleetMetrics(replicas=lambda: 1, desired=lambda: 1, in_flight=lambda: 0)
    return ServingMetrics().series_names() | fleet.series_names()


def test_committed_dashboard_is_what_the_generator_builds():
    text = (ROOT / "grafana" / "labkit.json").read_text()
    assert text == generator().render(), "monitoring/grafana/labkit.json is not generate.py's: run `make grafana`"


def test_every_dashboard_query_names_only_metrics_labkit_exports():
    exported = exported_series()
    queries = dashboard_queries()
    assert len(queries) >= 30
    for title, expr in queries:
        named = set(METRIC.findall(expr))
        assert named, f"{title}: {expr} names no labkit metric"
        assert named <= exported, f"{title}: {sorted(named - exported)} not exported by a labkit server or router"
        assert 'job=~"$job"' in expr and expr.count("{") == expr.count('job=~"$job"'), f"{title}: {expr}"


def test_dashboard_covers_what_the_issue_asks_for():
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for needed in ("histogram_quantile(0.5, sum by (le) (rate(labkit:time_to_first_token_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(labkit:time_to_first_token_seconds_bucket",
                   "labkit:e2e_request_latency_seconds", "rate(labkit:generation_tokens_total",
                   "labkit:num_requests_running", "labkit:num_requests_waiting", "labkit:kv_cache_usage_perc",
                   "labkit:gpu_memory_used_bytes", "labkit:gpu_utilization_perc", "labkit:replicas",
                   'sum(rate(labkit:goodput_requests_total{job=~"$job"}[$__rate_interval])) / '
                   'sum(rate(labkit:request_success_total{job=~"$job"}[$__rate_interval]))',
                   'sum by (phase) (rate(labkit:slo_missed_requests_total{job=~"$job"}[$__rate_interval]))',
                   'sum(rate(labkit:prefix_cache_hits_total{job=~"$job"}[$__rate_interval])) / '
                   'sum(rate(labkit:prefix_cache_queries_total{job=~"$job"}[$__rate_interval]))',
                   'labkit:slo_target_seconds{job=~"$job",slo="ttft"}'):
        assert needed in exprs, needed


def unit_of(panel: dict, ref_id: str) -> str:
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byFrameRefID", "options": ref_id}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    return prop["value"]
    return panel["fieldConfig"]["defaults"]["unit"]


def is_fraction(expr: str) -> bool:
    """A `_perc` gauge, or one counter's rate over another's (goodput, prefix-cache hits)."""
    names = METRIC.findall(expr)
    return any(n.endswith("_perc") for n in names) or (" / " in expr and all(n.endswith("_total") for n in names))


def test_fractions_are_shown_as_percent_of_one():
    """Every fraction is 0-1 (the `_perc` convention): Grafana's `percentunit`, never `percent` (0-100)."""
    fractions = [(panel, target) for panel in committed()["panels"] for target in panel["targets"]
                 if is_fraction(target["expr"])]
    assert len(fractions) >= 5  # KV cache, GPU, CPU, goodput fraction, prefix-cache hit rate
    for panel, target in fractions:
        assert unit_of(panel, target["refId"]) == "percentunit", (panel["title"], target["expr"])


def test_panels_have_stable_ids_and_tile_the_grid_without_overlap():
    panels = committed()["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    boxes = [p["gridPos"] for p in panels]
    assert all(b["x"] >= 0 and b["x"] + b["w"] <= 24 and b["w"] > 0 and b["h"] > 0 for b in boxes)
    for a, b in combinations(boxes, 2):
        apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"]
                 or b["y"] + b["h"] <= a["y"])
        assert apart, (a, b)


def test_scrape_config_targets_a_server_and_replicas():
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["labkit"]["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    replica_files = jobs["labkit-replicas"]["file_sd_configs"][0]["files"]
    for pattern in replica_files:
        assert json.loads((ROOT / pattern).read_text())[0]["labels"]["role"] == "replica"
