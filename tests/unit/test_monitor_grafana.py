"""monitoring/: the Grafana dashboard only queries metrics a labkit server exports; the scrape config is sound."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from labkit.monitor import ServingMetrics
from labkit.monitor.metrics import Histogram

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2] / "monitoring"
METRIC = re.compile(r"labkit:[a-zA-Z0-9_:]+")


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "grafana" / "labkit.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def exported_series() -> set[str]:
    """Every series name the server's /metrics can carry (histograms as _bucket, _sum and _count)."""
    registry = ServingMetrics().registry
    names = set()
    for name in registry.names():
        if isinstance(registry.get(name), Histogram):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def test_every_dashboard_query_names_only_metrics_the_server_exports():
    exported = exported_series()
    queries = dashboard_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        named = set(METRIC.findall(expr))
        assert named, f"{title}: {expr} names no labkit metric"
        assert named <= exported, f"{title}: {sorted(named - exported)} not exported by a labkit server"


def test_dashboard_covers_what_the_issue_asks_for():
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for needed in ("histogram_quantile(0.5, sum by (le) (rate(labkit:time_to_first_token_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(labkit:time_to_first_token_seconds_bucket",
                   "labkit:e2e_request_latency_seconds", "rate(labkit:generation_tokens_total",
                   "labkit:num_requests_running", "labkit:num_requests_waiting", "labkit:kv_cache_usage_perc",
                   "labkit:gpu_memory_used_bytes", "labkit:gpu_utilization_perc", "labkit:replicas"):
        assert needed in exprs, needed


def test_scrape_config_targets_a_server_and_replicas():
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["labkit"]["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    replica_files = jobs["labkit-replicas"]["file_sd_configs"][0]["files"]
    for pattern in replica_files:
        assert json.loads((ROOT / pattern).read_text())[0]["labels"]["role"] == "replica"
