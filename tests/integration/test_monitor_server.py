"""One live server, watched in-process (its handle's bus) and over HTTP (/metrics), and by `labkit monitor`."""
from __future__ import annotations

import threading

import httpx
import pytest

import labkit
from widgets import Dashboard

pytestmark = pytest.mark.integration
TOKENS = 6


@pytest.fixture(scope="module")
def server(tiny_model_dirs):
    tiny = labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    with labkit.serve(tiny) as handle:
        yield handle


def traffic(server, n: int) -> None:
    def one(i):
        httpx.post(server.url + "/v1/completions", timeout=60,
                   json={"prompt": f"hello {i}", "max_tokens": TOKENS, "ignore_eos": True}).raise_for_status()

    workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_local_and_remote_sources_agree(server):
    local = labkit.monitor.source(server, window_s=120)
    remote = labkit.monitor.source(server.url, window_s=120)
    first = remote.read()
    assert first.requests_per_s is None and first.running == 0  # one scrape: gauges, no rates yet
    traffic(server, 8)
    near, far = local.read(), remote.read()
    local.close()
    remote.close()
    assert near.requests_total == 8 and near.tokens_total == 8 * TOKENS and near.latency.count == 8
    assert far.latency.count == 8 and far.ttft.count == 8 and far.tokens_per_s > 0 and far.requests_per_s > 0
    assert far.latency.mean == pytest.approx(near.latency.mean, rel=1e-6)  # the same timings, two routes
    assert near.latency.p50 <= near.latency.p99 and far.latency.p50 <= far.latency.p99
    assert far.itl.count == near.itl.count == 8 * (TOKENS - 1)
    assert far.batch_size is not None and far.batch_size >= 1 and far.memory.used_bytes > 0
    assert (far.running, far.waiting, far.kv_usage) == (0, 0, 0)


def test_dashboard_over_http_grows_with_traffic(server):
    dash = Dashboard(server.url, start=False)
    dash.refresh()
    traffic(server, 4)
    dash.refresh()
    dash.close()
    tokens = dash.throughput.figure.data[0]
    assert len(tokens.x) == 2 and tokens.y[0] is None and tokens.y[1] > 0
    assert "server process RSS" in dash.memory.figure.layout.title.text or "GPU" in dash.memory.figure.layout.title.text


def test_cli_monitor_prints_a_table_and_refuses_an_unreachable_url(server, capsys):
    from labkit.cli import main

    traffic(server, 2)
    assert main(["monitor", "--url", server.url, "--interval", "0.3", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("labkit monitor") == 2 and "time to first token" in out
    assert "tokens/s" in out and "KV cache" in out and "\033[2J" not in out  # not a terminal: no screen clearing
    assert main(["monitor", "--url", "http://127.0.0.1:9"]) == 1  # the world's failure, not the user's
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: cannot read http://127.0.0.1:9/metrics") and "Traceback" not in err
