"""Backpressure (429 + Retry-After), timeouts (504), the API key (401) and CORS, each on its own small
server over a tiny random Llama."""
from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

import labkit
from labkit import ServerConfig
from loopback import metric

pytestmark = pytest.mark.integration
LONG = {"prompt": "go on and on", "max_tokens": 400, "ignore_eos": True}


@pytest.fixture(scope="module")
def tiny_llm(tiny_model_dirs):
    return labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _first_event(lines) -> dict:
    """The first event of a stream, leaving the stream open (dropping the iterator would close it)."""
    for line in lines:
        if line.startswith("data:"):
            return json.loads(line[5:])
    raise AssertionError("no event")


def test_full_queue_gets_429_with_retry_after_and_recovers(default_llm_fp32):
    """The real model, slow enough that the one running request holds its slot while we knock."""
    config = ServerConfig(max_waiting=0, retry_after_s=2)
    with labkit.serve(default_llm_fp32, config=config, max_num_seqs=1) as server:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as busy:
                assert busy.status_code == 200
                lines = busy.iter_lines()
                _first_event(lines)  # the one slot is taken
                refused = c.post("/v1/completions", json={"prompt": "me too", "max_tokens": 2})
                assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
                assert refused.json()["error"]["type"] == "rate_limit_error"
                client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.RateLimitError):
                    client.completions.create(model=default_llm_fp32.name, prompt="again", max_tokens=2)
            # the client closed the stream: the server sees the disconnect and frees the slot within moments
            _wait_for(lambda: server.app.state.services.admission.in_flight == 0)
            ok = c.post("/v1/completions", json={"prompt": "now", "max_tokens": 2})
            assert ok.status_code == 200, ok.text


def test_slow_request_times_out_with_504_and_a_stream_ends_with_an_error_event(default_llm_fp32):
    config = ServerConfig(request_timeout_s=0.3)
    with labkit.serve(default_llm_fp32, config=config) as server:
        body = {**LONG, "max_tokens": 450}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
            events = [line for line in s.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][5:])["error"]["code"] == "timeout"
        assert httpx.get(server.url + "/health").status_code == 200  # the server carries on
        assert server.app.state.services.admission.in_flight == 0


def test_api_key_is_required_on_v1_only(tiny_llm):
    with labkit.serve(tiny_llm, config=ServerConfig(api_key="s3cret")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert httpx.get(server.url + "/v1/models").status_code == 401  # no key at all
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi"})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=tiny_llm.name, prompt="hi", max_tokens=2).usage.completion_tokens >= 1
        assert httpx.get(server.url + "/health").status_code == 200  # probes stay open


def test_cors_only_for_the_origins_given(tiny_llm):
    with labkit.serve(tiny_llm, config=ServerConfig(cors_origins=("http://app.example",))) as server:
        preflight = {"Access-Control-Request-Method": "POST"}
        ok = httpx.options(server.url + "/v1/completions", headers={"Origin": "http://app.example", **preflight})
        assert ok.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(server.url + "/v1/completions", headers={"Origin": "http://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers


def test_stop_drains_in_flight_requests_before_exiting(tiny_llm):
    """handle.stop() while a request streams: it still ends cleanly, with its full answer."""
    server = labkit.serve(tiny_llm, config=ServerConfig(shutdown_grace_s=20))
    result = {}

    def stream():
        body = {**LONG, "max_tokens": 200, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        result["lines"] = lines

    worker = threading.Thread(target=stream)
    worker.start()
    while server.app.state.services.admission.in_flight == 0 and worker.is_alive():
        pass
    server.stop()
    worker.join(30)
    assert result["lines"][-1] == "data: [DONE]"
    assert json.loads(result["lines"][-2][5:])["usage"]["completion_tokens"] == 200
    assert not server.running


def _kv_pages_used(server) -> int:
    return server.app.state.services.engine.engine.scheduler.blocks.num_used_pages


def test_client_disconnect_cancels_the_request_and_frees_its_kv_pages(default_llm_fp32):
    with labkit.serve(default_llm_fp32) as server:
        services = server.app.state.services
        # streamed: read a few tokens, then hang up
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as s:
                lines = s.iter_lines()
                for _ in range(3):
                    _first_event(lines)
                assert _kv_pages_used(server) > 0 and services.num_running() == 1
        _wait_for(lambda: _kv_pages_used(server) == 0 and services.num_running() == 0, timeout=2.0)
        # not streamed: the client gives up (timeout) while the server generates
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json=LONG, timeout=0.5)
        _wait_for(lambda: _kv_pages_used(server) == 0 and services.admission.in_flight == 0, timeout=2.0)
        metrics = httpx.get(server.url + "/metrics").text
        assert metric(metrics, 'labkit:request_success_total{finished_reason="abort"}') == 2
        assert metric(metrics, "labkit:kv_cache_usage_perc") == 0


def test_a_busy_port_is_one_clear_error(tiny_llm, tiny_model_dirs):
    with labkit.serve(tiny_llm) as first:
        other = labkit.load_model(tiny_model_dirs["gpt2"], device="cpu", dtype="float32", progress=False)
        with pytest.raises(OSError, match="could not start"):
            labkit.serve(other, port=first.port, startup_timeout=30)
        assert httpx.get(first.url + "/health").status_code == 200


def test_host_comes_from_the_config_unless_given(tiny_llm):
    with labkit.serve(tiny_llm, config=ServerConfig(host="127.0.0.2")) as server:
        assert server.url.startswith("http://127.0.0.2:")
        assert httpx.get(server.url + "/ready").status_code == 200


def test_stop_cancels_what_outlives_the_grace_period(default_llm_fp32):
    """A request still running when the grace period ends gets an error event and [DONE], not a cut stream."""
    server = labkit.serve(default_llm_fp32, config=ServerConfig(shutdown_grace_s=0.3))
    with httpx.stream("POST", server.url + "/v1/completions", json={**LONG, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()
        _first_event(lines)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        rest = [line for line in lines if line.startswith("data:")]
    stopper.join(30)
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][5:])["error"]["code"] == "cancelled"
    assert not server.running
    assert _kv_pages_used(server) == 0
