"""A real Prometheus (Debian's package, installed by `make test`) scrapes a live labkit server under traffic
with monitoring/prometheus.yml; its HTTP API must return the series and values, and every query of the
Grafana dashboard must run on it."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

import labkit

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2] / "monitoring"
REQUESTS, TOKENS = 6, 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dirs):
    tiny = labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    with labkit.serve(tiny) as handle:
        yield handle


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is missing: `make test` installs it (APT_TEST_PACKAGES)")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    target = f"{server.host}:{server.port}"
    for job in config["scrape_configs"]:
        if "static_configs" in job:
            job["static_configs"][0]["targets"] = [target]
        for sd in job.get("file_sd_configs", []):  # the replicas file, listing the same server
            replicas = json.loads((ROOT / sd["files"][0]).read_text())
            replicas[0]["targets"] = [target]
            (work / "replicas.json").write_text(json.dumps(replicas))
            sd["files"] = [str(work / "replicas.json")]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                               stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (work / "prometheus.log").read_text()
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def query(prometheus: str, promql: str) -> list[dict]:
    body = httpx.get(prometheus + "/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def wait_for(prometheus: str, promql: str, check, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus, promql)
        if result and check(result):
            return result
        assert time.monotonic() < deadline, f"{promql} never satisfied: {result}"
        time.sleep(0.5)


def traffic(server, n: int) -> None:
    def one(i):
        httpx.post(server.url + "/v1/completions", timeout=60,
                   json={"prompt": f"request {i}", "max_tokens": TOKENS, "ignore_eos": True}).raise_for_status()

    workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_prometheus_scrapes_the_server_and_the_dashboard_queries_run(server, prometheus):
    wait_for(prometheus, 'up{job="labkit"}', lambda r: r[0]["value"][1] == "1")
    wait_for(prometheus, 'up{job="labkit-replicas"}', lambda r: r[0]["value"][1] == "1")  # file_sd target
    traffic(server, REQUESTS)
    time.sleep(1.5)
    traffic(server, REQUESTS)  # two bursts a few scrapes apart: rate() has something to measure
    total = REQUESTS * 2 * TOKENS
    wait_for(prometheus, 'labkit:generation_tokens_total{job="labkit"}', lambda r: float(r[0]["value"][1]) == total)
    wait_for(prometheus, 'sum(labkit:request_success_total{job="labkit",finished_reason="length"})',
             lambda r: float(r[0]["value"][1]) == REQUESTS * 2)
    wait_for(prometheus, 'labkit:e2e_request_latency_seconds_count{job="labkit"}',
             lambda r: float(r[0]["value"][1]) == REQUESTS * 2)
    ttft = wait_for(prometheus, 'histogram_quantile(0.99, sum by (le) (rate('
                    'labkit:time_to_first_token_seconds_bucket{job="labkit"}[1m])))',
                    lambda r: r[0]["value"][1] not in ("NaN", "+Inf"))
    assert 0 < float(ttft[0]["value"][1]) < 60
    assert float(query(prometheus, 'labkit:process_resident_memory_bytes{job="labkit"}')[0]["value"][1]) > 10e6
    assert query(prometheus, 'labkit:kv_cache_usage_perc{job="labkit"}')[0]["value"][1] == "0"  # idle again

    dashboard = json.loads((ROOT / "grafana" / "labkit.json").read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql = target["expr"].replace("$job", ".+").replace("$__rate_interval", "1m")
            if not query(prometheus, promql):  # must parse and run; an empty answer is noted below
                empty.append(f"{panel['title']}: {promql}")
    allowed = ("gpu_", "replicas", "request_errors_total")  # GPU without NVML, fleet gauges without a router
    assert all(any(a in line for a in allowed) for line in empty), empty
