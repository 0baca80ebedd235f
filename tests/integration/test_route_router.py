"""The router in front of real labkit servers (in-process, tiny random models): forwarding (every endpoint of
the API), streaming passthrough, routing by model name, retries, 429/503 instead of hanging, cancellation,
metrics."""
from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import httpx
import openai
import pytest
from loopback import background_asgi, metric, read_body

import labkit
from labkit.config import RouterConfig
from labkit.route import StaticPool, route

pytestmark = pytest.mark.integration

LONG = {"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": True, "temperature": 0}


async def slow_upstream(scope, receive, send):
    """A stand-in replica whose completions take the body's `sleep` seconds (for a replica kept busy)."""
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    fields = json.loads(body) if body else {}
    if fields.get("die_mid_stream"):  # one event, then the connection drops as if the process died
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"choices": []}\n\n', "more_body": True})
        raise RuntimeError("replica died mid-stream")
    if scope["path"] == "/v1/completions":
        await asyncio.sleep(fields.get("sleep", 0))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


@pytest.fixture(scope="module")
def slow_url():
    with background_asgi(slow_upstream, log_level="warning") as url:
        yield url


@pytest.fixture(scope="module")
def servers(tiny_model_dirs):
    """Two replicas of the tiny Llama and one of the tiny Qwen2, each a labkit server on loopback."""
    handles = [labkit.serve(tiny_model_dirs["llama"], device="cpu", dtype="float32"),
               labkit.serve(tiny_model_dirs["llama"], device="cpu", dtype="float32"),
               labkit.serve(tiny_model_dirs["qwen2"], device="cpu", dtype="float32")]
    yield handles
    for handle in handles:
        handle.stop()


@pytest.fixture
def unused_port():
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def client():
    with httpx.Client(timeout=30) as c:
        yield c


def settled_in_flight(router) -> int:
    """The router's in-flight count once it settles: it counts a request done right after the last byte
    went out, not necessarily before the client has read it."""
    deadline = time.monotonic() + 2
    while router.router.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    return router.router.in_flight()




def test_completions_and_chat_through_the_router_equal_the_replica_direct(servers, client):
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    direct = client.post(servers[0].url + "/v1/completions", json=body).json()
    with route([s.url for s in servers[:2]], policy="round_robin") as router:
        replicas = set()
        for _ in range(4):
            response = client.post(router.url + "/v1/completions", json=body)
            assert response.status_code == 200
            assert response.json()["choices"][0]["text"] == direct["choices"][0]["text"]
            replicas.add(response.headers["x-labkit-replica"])
        assert replicas == {"static-0", "static-1"}
        chat = client.post(router.url + "/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"


def test_streaming_passes_through_event_by_event(servers, client):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0, "stream": True}
    with client.stream("POST", servers[0].url + "/v1/chat/completions", json=body) as r:
        direct = [json.loads(line[5:])["choices"] for line in r.iter_lines() if line.startswith("data: {")]
    with route([servers[0].url]) as router:
        with client.stream("POST", router.url + "/v1/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert [json.loads(line[5:])["choices"] for line in lines[:-1]] == direct


def test_routing_by_model_name_across_pools(servers, client, tiny_model_dirs):
    pools = {"llama": StaticPool([servers[0].url, servers[1].url], name="llama"),
             "qwen": StaticPool([servers[2].url], name="qwen")}
    with route(pools) as router:
        for model, pool in (("llama", "llama"), (tiny_model_dirs["qwen2"], "qwen"), (tiny_model_dirs["llama"], "llama")):
            response = client.post(router.url + "/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2})
            assert response.status_code == 200, response.text
            assert response.headers["x-labkit-replica"].startswith(pool + "-")
        unknown = client.post(router.url + "/v1/completions", json={"model": "gpt-9", "prompt": "x"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        ids = {card["id"] for card in client.get(router.url + "/v1/models").json()["data"]}
        assert ids == {tiny_model_dirs["llama"], tiny_model_dirs["qwen2"]}


def test_a_replica_that_refuses_the_connection_costs_one_retry_not_an_error(servers, client, unused_port):
    dead = f"http://127.0.0.1:{unused_port}"
    with route([dead, servers[0].url], policy="round_robin") as router:
        statuses = [client.post(router.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code
                    for _ in range(6)]
        assert statuses == [200] * 6
        assert metric(client.get(router.url + "/metrics").text, "labkit:router_retries_total") >= 1


def test_every_replica_down_is_a_prompt_503_not_a_hang(client, unused_port):
    with route([f"http://127.0.0.1:{unused_port}"]) as router:
        started = time.monotonic()
        response = client.post(router.url + "/v1/completions", json={"prompt": "x"})
        assert response.status_code == 503 and "retry-after" in response.headers
        assert response.json()["error"]["code"] == "no_replicas"
        assert time.monotonic() - started < 10
        assert client.get(router.url + "/ready").status_code == 503


def test_every_replica_full_is_a_429_with_retry_after(slow_url, client):
    config = RouterConfig(max_outstanding_per_replica=2, retry_after_s=2)
    with route([slow_url, slow_url], config=config) as router, ThreadPoolExecutor(4) as pool:
        held = [pool.submit(httpx.post, router.url + "/v1/completions", json={"sleep": 3}, timeout=30)
                for _ in range(4)]  # two per replica: every slot taken
        deadline = time.monotonic() + 10
        while router.router.in_flight() < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        response = client.post(router.url + "/v1/completions", json={"sleep": 0})
        assert response.status_code == 429 and response.headers["retry-after"] == "2"
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert time.monotonic() - started < 2  # refused at once, not queued behind the held requests
        assert [f.result().status_code for f in held] == [200] * 4
        assert client.post(router.url + "/v1/completions", json={"sleep": 0}).status_code == 200  # free again


def test_a_replica_that_dies_mid_stream_ends_the_stream_with_an_error_event(slow_url, client):
    with route([slow_url]) as router:
        with client.stream("POST", router.url + "/v1/completions", json={"die_mid_stream": True, "stream": True}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data:")]
        assert events[0] == 'data: {"choices": []}'
        assert json.loads(events[-2][5:])["error"]["code"] == "replica_failed" and events[-1] == "data: [DONE]"
        assert settled_in_flight(router) == 0


def test_a_client_that_hangs_up_cancels_the_request_on_the_replica(servers, client):
    replica = servers[1]
    aborted = metric(client.get(replica.url + "/metrics").text, 'labkit:request_success_total{finished_reason="abort"}')
    with route([replica.url]) as router, httpx.Client(timeout=60) as other:
        with other.stream("POST", router.url + "/v1/completions", json={**LONG, "stream": True}) as r:
            next(r.iter_lines())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = client.get(replica.url + "/metrics").text
            if metric(text, 'labkit:request_success_total{finished_reason="abort"}') > aborted:
                break
            time.sleep(0.1)
        assert metric(text, 'labkit:request_success_total{finished_reason="abort"}') == aborted + 1
        assert metric(text, "labkit:num_requests_running") == 0
        assert router.router.in_flight() == 0


def test_prefix_affinity_sends_a_session_to_one_replica(servers, client):
    with route([s.url for s in servers[:2]], policy="prefix_affinity") as router:
        for session in ("alice", "bob", "carol"):
            seen = {client.post(router.url + "/v1/completions", headers={"X-Session-Id": session},
                                json={"prompt": f"turn {i}", "max_tokens": 1}).headers["x-labkit-replica"]
                    for i in range(5)}
            assert len(seen) == 1
        prompt = "A long shared system prompt. " * 20
        seen = {client.post(router.url + "/v1/completions", json={"prompt": prompt + str(i), "max_tokens": 1})
                .headers["x-labkit-replica"] for i in range(5)}
        assert len(seen) == 1


def test_router_metrics_count_requests_per_replica_and_policy(servers, client):
    with route([s.url for s in servers[:2]], policy="least_outstanding") as router:
        for _ in range(4):
            client.post(router.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        text = client.get(router.url + "/metrics").text
    assert metric(text, "labkit:replicas") == 2
    assert metric(text, 'labkit:router_requests_total{replica="static-0",policy="least_outstanding"}') + \
        metric(text, 'labkit:router_requests_total{replica="static-1",policy="least_outstanding"}') == 4


def test_a_replica_slower_than_the_request_timeout_is_a_504(slow_url, client):
    with route([slow_url], config=RouterConfig(request_timeout_s=0.5)) as router:
        response = client.post(router.url + "/v1/completions", json={"sleep": 3})
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout_error"
        assert settled_in_flight(router) == 0


def test_a_body_over_the_limit_is_a_413_from_the_router(slow_url, client):
    with route([slow_url], config=RouterConfig(max_body_bytes=1000)) as router:
        response = client.post(router.url + "/v1/completions", json={"prompt": "x" * 2000})
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_bad_json_and_unknown_routes_get_openai_shaped_errors(servers, client):
    with route([servers[0].url]) as router:
        bad = client.post(router.url + "/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        assert client.get(router.url + "/v2/nothing").status_code == 404


def test_api_keys_pass_through_to_replicas_that_ask_for_one(tiny_model_dirs, client):
    keyed = labkit.serve(tiny_model_dirs["gpt2"], device="cpu", dtype="float32",
                         config=labkit.ServerConfig(api_key="sesame"))
    try:
        with route([keyed.url]) as router:
            body = {"prompt": "hi", "max_tokens": 2}
            assert client.post(router.url + "/v1/completions", json=body).status_code == 401
            ok = client.post(router.url + "/v1/completions", json=body, headers={"Authorization": "Bearer sesame"})
            assert ok.status_code == 200
            models = client.get(router.url + "/v1/models", headers={"Authorization": "Bearer sesame"}).json()
            assert [m["id"] for m in models["data"]] == [tiny_model_dirs["gpt2"]]
    finally:
        keyed.stop()


def test_responses_tokenize_model_and_version_are_forwarded(servers, client, tiny_model_dirs):
    llama, qwen = tiny_model_dirs["llama"], tiny_model_dirs["qwen2"]
    pools = {"llama": StaticPool([servers[0].url], name="llama"), "qwen": StaticPool([servers[2].url], name="qwen")}
    with route(pools) as router:
        card = client.get(router.url + "/v1/models/" + qwen)  # routed by the id in the path (a folder: slashes)
        assert card.json()["id"] == qwen and card.headers["x-labkit-replica"].startswith("qwen-")
        assert client.get(router.url + "/v1/models/gpt-9").json()["error"]["code"] == "model_not_found"
        tokens = client.post(router.url + "/tokenize", json={"model": qwen, "prompt": "hello world"})
        assert tokens.json() == client.post(servers[2].url + "/tokenize", json={"prompt": "hello world"}).json()
        back = client.post(router.url + "/detokenize", json={"model": qwen, "tokens": tokens.json()["tokens"]})
        assert back.json() == {"prompt": "hello world"}
        assert client.get(router.url + "/version").json() == {"version": metadata.version("labkit")}
        sdk = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        kwargs = dict(model=llama, input="hi", max_output_tokens=6, temperature=0)
        direct = openai.OpenAI(base_url=servers[0].url + "/v1", api_key="unused").responses.create(**kwargs)
        assert sdk.responses.create(**kwargs).output_text == direct.output_text
        events = list(sdk.responses.create(stream=True, **kwargs))
        assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == direct.output_text
