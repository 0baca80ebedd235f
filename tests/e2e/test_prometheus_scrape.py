"""A real Prometheus (Debian's package, installed by `make test`) scrapes a live labkit server and a router in
front of it, with monitoring/prometheus.yml, under traffic; its HTTP API must return the series and values
(the router's adding up its replica, the model_name label, goodput against SLOs), and every query of the
Grafana dashboard must return data."""
from __future__ import annotations

import json
import math
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
from labkit.config import ServerConfig
from labkit.monitor.devices import gpu_readings
from labkit.monitor.slo import SLO
from labkit.route import route

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2] / "monitoring"
REQUESTS, TOKENS, SHORT = 6, 8, 2
# Any request with two tokens or more has a mean gap over a microsecond: it misses the ITL SLO, in decode. A
# one-token request has no gap to judge and meets the loose TTFT and end-to-end SLOs: goodput.
SLOS = SLO(ttft_ms=60_000, itl_ms=0.001, e2e_ms=60_000)
JOBS = "labkit|labkit-replicas"  # $job: the router's job and its replica's
RATE_WINDOW = "1m"  # $__rate_interval: longer than the whole test at a 1 s scrape interval, so it sees every request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dirs):
    tiny = labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    with labkit.serve(tiny, config=ServerConfig(slo=SLOS)) as handle:
        yield handle


@pytest.fixture(scope="module")
def router(server):
    with route([server.url]) as handle:
        yield handle


def host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


@pytest.fixture(scope="module")
def prometheus(server, router, tmp_path_factory):
    """monitoring/prometheus.yml as shipped, with job labkit on the router and labkit-replicas (file-based
    discovery) on the server behind it, as after `labkit up`."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is missing: `make test` installs it (APT_TEST_PACKAGES)")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        if "static_configs" in job:
            job["static_configs"][0]["targets"] = [host_port(router.url)]
        for sd in job.get("file_sd_configs", []):
            replicas = json.loads((ROOT / sd["files"][0]).read_text())
            replicas[0]["targets"] = [host_port(server.url)]
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


def value(result: list[dict]) -> float:
    return float(result[0]["value"][1])


def traffic(url: str) -> None:
    def one(i, tokens):
        httpx.post(url + "/v1/completions", timeout=60,
                   json={"prompt": f"request {i}", "max_tokens": tokens, "ignore_eos": True}).raise_for_status()

    workers = [threading.Thread(target=one, args=(i, TOKENS if i < REQUESTS else 1)) for i in range(REQUESTS + SHORT)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_prometheus_scrapes_the_server_and_router_and_every_dashboard_query_returns_data(server, router, prometheus):
    wait_for(prometheus, 'up{job="labkit"}', lambda r: r[0]["value"][1] == "1")  # the router
    wait_for(prometheus, 'up{job="labkit-replicas"}', lambda r: r[0]["value"][1] == "1")  # file_sd target
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": -1}).status_code == 400
    traffic(router.url)
    time.sleep(1.5)
    traffic(router.url)  # two bursts a few scrapes apart: rate() has something to measure
    total, finished = REQUESTS * 2 * TOKENS + SHORT * 2, (REQUESTS + SHORT) * 2
    model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    for job in ("labkit-replicas", "labkit"):  # the server itself, and the router adding up its replica
        tokens = wait_for(prometheus, f'labkit:generation_tokens_total{{job="{job}"}}', lambda r: value(r) == total)
        assert tokens[0]["metric"]["model_name"] == model
    wait_for(prometheus, 'sum(labkit:request_success_total{job="labkit-replicas",finished_reason="length"})',
             lambda r: value(r) == finished)
    wait_for(prometheus, 'labkit:e2e_request_latency_seconds_count{job="labkit-replicas"}',
             lambda r: value(r) == finished)
    wait_for(prometheus, 'labkit:goodput_requests_total{job="labkit-replicas"}', lambda r: value(r) == SHORT * 2)
    missed = wait_for(prometheus, 'labkit:slo_missed_requests_total{job="labkit-replicas"} > 0',
                      lambda r: value(r) == REQUESTS * 2)
    assert [m["metric"]["phase"] for m in missed] == ["decode"]
    targets = query(prometheus, 'labkit:slo_target_seconds{job="labkit-replicas"}')
    assert {m["metric"]["slo"]: float(m["value"][1]) for m in targets} == SLOS.targets_s()
    assert value(query(prometheus, 'labkit:replicas{job="labkit"}')) == 1
    ttft = wait_for(prometheus, 'histogram_quantile(0.99, sum by (le) (rate('
                    'labkit:time_to_first_token_seconds_bucket{job="labkit-replicas"}[1m])))',
                    lambda r: r[0]["value"][1] not in ("NaN", "+Inf"))
    assert 0 < value(ttft) < 60
    assert value(query(prometheus, 'labkit:process_resident_memory_bytes{job="labkit-replicas"}')) > 10e6
    assert query(prometheus, 'labkit:kv_cache_usage_perc{job="labkit-replicas"}')[0]["value"][1] == "0"  # idle again

    # The dashboard, as Grafana would send it with both jobs picked. NVML answers only on a machine with an
    # NVIDIA driver: elsewhere the GPU families are declared without samples, and their panels stay empty.
    without_data = set() if gpu_readings() else {"GPU memory", "GPU utilisation"}
    dashboard = json.loads((ROOT / "grafana" / "labkit.json").read_text())
    checked = 0
    for panel in dashboard["panels"]:
        if panel["title"] in without_data:
            continue
        for target in panel["targets"]:
            promql = target["expr"].replace("$job", JOBS).replace("$__rate_interval", RATE_WINDOW)
            wait_for(prometheus, promql, lambda r: any(not math.isnan(float(s["value"][1])) for s in r), timeout=10)
            checked += 1
    assert checked >= 30
