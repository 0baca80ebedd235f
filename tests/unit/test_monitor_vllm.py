"""The monitor watches a vLLM server as it watches labkit: two /metrics scrapes recorded from a real vLLM 0.32
server under load (tests/data/vllm/) served on loopback, read by RemoteSource, `labkit monitor` and the demo."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from labkit.monitor import engine_names, scrape, sources
from loopback import background_asgi

pytestmark = pytest.mark.unit
SCRAPES = [(Path(__file__).parents[1] / "data" / "vllm" / f"vllm-0.32-metrics-{i}.txt").read_text() for i in (1, 2)]


def vllm_server(texts: list[str]):
    """Answers GET /metrics with each text in turn, then the last one again."""
    pending = list(texts)

    async def app(scope, receive, send):
        body = pending.pop(0) if len(pending) > 1 else pending[0]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body.encode()})
    return background_asgi(app)


@pytest.mark.parametrize("text", SCRAPES, ids=["scrape-1", "scrape-2"])
def test_each_recorded_scrape_parses_and_reads_in_labkits_names(text):
    samples = scrape.parse(text)
    assert engine_names.engine_of(samples) == engine_names.VLLM
    assert not any(name.endswith("_created") for name in samples)
    ours = engine_names.canonical(samples)
    for labkit_name, vllm_names in {**engine_names.VLLM_SERIES, **engine_names.VLLM_HISTOGRAMS}.items():
        found = [n for n in vllm_names if n in samples or f"{n}_count" in samples]
        assert found, f"the recording has none of {vllm_names}"
        part = "" if found[0] in samples else "_count"
        assert scrape.value(ours, labkit_name + part) == scrape.value(samples, found[0] + part)
    assert 0 <= scrape.value(ours, "labkit:kv_cache_usage_perc") <= 1  # a fraction in vLLM too
    assert scrape.value(ours, "vllm:generation_tokens_total") == scrape.value(ours, "labkit:generation_tokens_total")


def test_a_labkit_scrape_is_left_as_it_is():
    samples = scrape.parse('labkit:generation_tokens_total{model_name="m"} 3\n')
    assert engine_names.engine_of(samples) == engine_names.LABKIT and engine_names.canonical(samples) is samples
    assert engine_names.engine_of(scrape.parse("process_open_fds 5\n")) is None


def test_older_vllm_names_are_read_too():
    older = scrape.parse('vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
                         'vllm:time_per_output_token_seconds_bucket{le="0.1",model_name="m"} 4\n'
                         'vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 5\n'
                         'vllm:time_per_output_token_seconds_count{model_name="m"} 5\n'
                         'vllm:time_per_output_token_seconds_sum{model_name="m"} 0.3\n')
    ours = engine_names.canonical(older)
    assert scrape.value(ours, "labkit:kv_cache_usage_perc") == 0.25
    assert scrape.buckets(ours, "labkit:inter_token_latency_seconds") == {0.1: 4, float("inf"): 5}


def test_remote_source_over_vllm_gives_rates_percentiles_and_gauges(monkeypatch):
    clock = iter([100.0, 110.0])  # the two reads, 10 s apart
    monkeypatch.setattr(sources, "now", lambda: next(clock))
    with vllm_server(SCRAPES) as url:
        source = sources.source(url, window_s=60)
        first, second = source.read(), source.read()
        source.close()
    assert first.requests_per_s is None and first.running == 15  # one scrape: gauges only
    assert second.source == f"{url} (vLLM)" and second.window_s == 10
    # generation tokens 2067 -> 4609, finished requests 23 -> 58 (every finished_reason)
    assert second.tokens_per_s == pytest.approx(254.2) and second.requests_per_s == pytest.approx(3.5)
    assert (second.running, second.waiting) == (14, 0) and second.kv_usage == pytest.approx(0.010996563573883122)
    assert (second.ttft.count, second.itl.count, second.latency.count, second.queue.count) == (34, 2508, 35, 35)
    assert second.ttft.mean == pytest.approx((8.377976179122925 - 5.9317872524261475) / 34)
    # TTFT buckets grew by 2 in (0.04, 0.06], 26 in (0.06, 0.08], 6 in (0.08, 0.1]: the ranks 17 and 33.66
    assert second.ttft.p50 == pytest.approx(0.06 + 0.02 * (17 - 2) / 26)
    assert second.ttft.p99 == pytest.approx(0.08 + 0.02 * (0.99 * 34 - 28) / 6)
    # inter-token buckets grew by 368 in (0.01, 0.025], 2097 in (0.025, 0.05], 43 in (0.05, 0.075]
    assert second.itl.p50 == pytest.approx(0.025 + 0.025 * (1254 - 368) / 2097)
    assert second.itl.p99 == pytest.approx(0.05 + 0.025 * (0.99 * 2508 - 2465) / 43)
    assert second.requests_total == 58 and second.tokens_total == 4609
    assert second.batch_size is None and second.memory is None  # vLLM exports neither
    assert "vLLM exports no batch size or device memory" in second.notes


def test_cli_monitor_shows_a_vllm_server_with_numbers_and_names_the_engine(capsys):
    from labkit.cli import main

    with vllm_server(SCRAPES) as url:
        assert main(["monitor", "--url", url, "--interval", "0.05", "--count", "2"]) == 0
    tables = capsys.readouterr().out.split("labkit monitor  ")[1:]
    assert len(tables) == 2
    for table in tables:
        assert table.startswith(f"{url} (vLLM)  ")
        for row in ("end-to-end", "time to first token", "inter-token", "queue"):  # mean p50 p95 p99 n: all numbers
            assert re.search(rf"^{row} +([0-9,]+( \(max\))? +){{4}}[1-9][0-9]*$", table, re.M), table
        assert re.search(r"^throughput +[0-9,.]+ tokens/s, [0-9,.]+ requests/s", table, re.M), table
        assert "14 running, 0 waiting, KV cache 1% used" in table


def test_demo_shows_a_vllm_servers_live_numbers():
    from labkit.demo import ChatBackend, format_live

    with vllm_server(SCRAPES) as url:
        backend = ChatBackend(url, model="smollm2-135m-instruct")
        first, second = backend.live(), backend.live()
    assert first.tokens_per_s is None and "measuring" in format_live(first)  # a rate needs two reads
    assert second.tokens_per_s > 0 and 0 < second.kv_usage < 1
    shown = format_live(second)
    assert "14 running, 0 waiting" in shown and f"KV cache {second.kv_usage:.1%} used" in shown, shown
    assert "does not answer" in format_live(None)


def test_dashboard_draws_a_vllm_server():
    from widgets import Dashboard

    with vllm_server(SCRAPES) as url:
        dash = Dashboard(url, start=False)
        dash.refresh()
        dash.refresh()
        dash.close()
    assert f"{url} (vLLM)" in dash.summary.value and "58 requests in all" in dash.summary.value
    tokens, ttft_p99 = dash.throughput.figure.data[0], dash.latency.figure.data[-1]
    assert tokens.y[0] is None and tokens.y[1] > 0 and ttft_p99.y[1] > 0
    assert dash.queue.figure.data[0].y[-1] == 14  # running
