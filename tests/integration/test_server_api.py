"""The OpenAI-compatible server on loopback, driven by the official `openai` client and plain HTTP.

One server for the module: a tiny random Llama (fast) and the real default encoder. The errors, the
access log and the metrics are checked on the same server."""
from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import openai
import pytest

import labkit
from labkit import ServerConfig
from labkit.monitor import scrape
from loopback import metric

pytestmark = pytest.mark.integration
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def tiny_llm(tiny_model_dirs):
    loaded = labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    return type(loaded)(**{**vars(loaded), "name": MODEL})  # a short, stable model id


@pytest.fixture(scope="module")
def server(tiny_llm, default_encoder, tmp_path_factory):
    log = tmp_path_factory.mktemp("access") / "access.jsonl"
    config = ServerConfig(access_log=str(log), max_body_bytes=64 * 1024)
    with labkit.serve(tiny_llm, encoder=default_encoder, config=config) as handle:
        handle.access_log_path = log
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_llm_and_the_encoder(client):
    cards = {m.id: m for m in client.models.list()}
    assert set(cards) == {MODEL, "minilm-l6-v2"}
    assert cards[MODEL].kind == "causal-lm" and cards["minilm-l6-v2"].kind == "encoder"


def test_completion_gives_exactly_max_tokens_with_ignore_eos(client, tiny_llm):
    prompt = "The capital of France is"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.object == "text_completion" and out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 7
    assert out.usage.prompt_tokens == len(tiny_llm.tokenizer(prompt)["input_ids"])
    assert out.choices[0].text


def test_streamed_chat_matches_the_plain_reply_and_reports_usage(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_streamed_completion_ends_with_done(server):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[5:]) for e in events[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_the_text(client):
    full = client.completions.create(model=MODEL, prompt="a b c", max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[5:8]
    if not stop.strip():
        pytest.skip("random-weight model produced whitespace where the stop would go")
    cut = client.completions.create(model=MODEL, prompt="a b c", max_tokens=20, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]


def test_embeddings_float_and_base64_match_the_encoder(client, server, default_encoder):
    texts = ["a cat sat on the mat", "quantum chromodynamics"]
    expected = default_encoder.embed(texts).numpy()
    via_client = client.embeddings.create(model="minilm-l6-v2", input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in via_client.data])
    assert got.shape == (2, 384) and np.allclose(got, expected, atol=1e-4)
    assert via_client.usage.prompt_tokens == sum(len(ids) for ids in default_encoder.tokenizer(texts)["input_ids"])
    plain = httpx.post(server.url + "/v1/embeddings", json={"input": texts[0], "encoding_format": "float"}).json()
    assert np.allclose(plain["data"][0]["embedding"], expected[0], atol=1e-4)


def test_concurrent_embeddings_are_batched(server):
    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/embeddings", json={"input": f"text {i}"}) for i in range(24)))

    before = server.app.state.services.encoder.batcher.stats.batches
    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert server.app.state.services.encoder.batcher.stats.batches - before < 24


def test_64_concurrent_streams_all_complete_with_their_token_counts(server):
    async def one(c, i):
        body = {"model": MODEL, "prompt": f"request {i}", "max_tokens": 4 + i % 13, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        pieces, usage, done = 0, None, False
        async with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data:"):
                    payload = json.loads(line[5:])
                    usage = payload.get("usage") or usage
                    pieces += bool(payload["choices"] and payload["choices"][0]["text"])
        return done, usage["completion_tokens"], 4 + i % 13

    async def run():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            return await asyncio.gather(*(one(c, i) for i in range(64)))

    results = asyncio.run(run())
    assert all(done and got == want for done, got, want in results)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "code", "param"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize("body,status,param", [
    ('{"model": "tiny-llama", "prompt": ', 400, None),  # malformed JSON
    ('{"prompt": 42}', 400, "prompt"),  # wrong type
    ('{"prompt": "hi", "max_tokens": -1}', 400, "max_tokens"),
    ('{"prompt": "hi", "temperature": 3.5}', 400, "temperature"),
    ('{"prompt": "hi", "top_p": 0}', 400, "top_p"),
    ('{"max_tokens": 3}', 400, "prompt"),  # missing
    ('{"prompt": "hi", "stream": "often"}', 400, "stream"),
    ('[1, 2]', 400, None),
])
def test_bad_input_gets_openai_error_shape(server, body, status, param):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    error = _error(r, status)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_model_is_404_and_wrong_kind_is_400(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="minilm-l6-v2", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="hi")


def test_prompt_longer_than_the_context_is_400(client, server):
    max_len = server.app.state.services.engine.max_model_len
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=[5] * (max_len + 1), max_tokens=1)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=[5] * 10, max_tokens=max_len)
    assert err.value.body["param"] == "max_tokens"


def test_body_over_the_limit_is_413_even_when_chunked(server):
    big = json.dumps({"prompt": "x" * 70_000})
    _error(httpx.post(server.url + "/v1/completions", content=big, headers={"Content-Type": "application/json"}), 413)

    def chunks():
        for _ in range(10):
            yield b" " * 10_000
        yield big.encode()

    _error(httpx.post(server.url + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"}),
           413)


def test_unknown_route_and_method_use_the_error_shape(server):
    assert _error(httpx.get(server.url + "/v1/nothing"), 404)["type"] == "not_found_error"
    _error(httpx.get(server.url + "/v1/completions"), 405)


def test_health_ready_docs_and_no_cors_by_default(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json()["status"] == "ready"
    assert httpx.get(server.url + "/docs").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models"} <= set(spec["paths"])
    r = httpx.options(server.url + "/v1/models", headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


def test_metrics_count_tokens_and_requests(server, client):
    names = ("labkit:generation_tokens_total", 'labkit:request_success_total{finished_reason="length"}',
             "labkit:e2e_request_latency_seconds_count", f'labkit:goodput_requests_total{{model_name="{MODEL}"}}')

    def scrape():
        text = httpx.get(server.url + "/metrics").text
        assert "labkit:kv_cache_usage_perc" in text and "labkit:num_requests_waiting" in text
        return {name: metric(text, name) for name in names}

    before = scrape()
    client.completions.create(model=MODEL, prompt="count me", max_tokens=3, extra_body={"ignore_eos": True})
    after = scrape()
    assert after["labkit:generation_tokens_total"] - before["labkit:generation_tokens_total"] == 3
    assert [after[n] - before[n] for n in names[1:]] == [1, 1, 1]  # no SLO set: a finished request is good


def test_access_log_has_one_json_line_per_request(server, client):
    client.completions.create(model=MODEL, prompt="log me", max_tokens=2, extra_body={"ignore_eos": True},
                              extra_headers={"X-Request-Id": "req-logged-1"})
    httpx.post(server.url + "/v1/completions", json={"prompt": 1})
    lines = [json.loads(line) for line in server.access_log_path.read_text().splitlines()]
    assert all(rec["@timestamp"].endswith("Z") and rec["log.level"] == "info" and "ecs.version" in rec
               and "trace" not in rec for rec in lines)  # ECS, and no trace ids with tracing off
    mine = next(rec for rec in lines if rec["http"]["request"]["id"] == "req-logged-1")
    assert mine["http"]["response"]["status_code"] == 200 and mine["url"]["path"] == "/v1/completions"
    assert mine["message"] == "POST /v1/completions 200" and mine["event"]["duration"] > 0
    assert mine["labkit"]["model"] == MODEL and mine["labkit"]["completion_tokens"] == 2
    assert mine["labkit"]["finish_reason"] == "length" and mine["labkit"]["ttft_ms"] > 0
    assert any(rec["http"]["response"]["status_code"] == 400 for rec in lines)


def test_a_client_reusing_its_request_id_concurrently_is_served_twice(server):
    async def both():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            body = {"prompt": "same id", "max_tokens": 20, "ignore_eos": True}
            return await asyncio.gather(*(c.post("/v1/completions", json=body, headers={"X-Request-Id": "dup"})
                                          for _ in range(2)))

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200]
    assert all(r.headers["x-request-id"] == "dup" for r in responses)


def test_a_repeated_prompt_is_served_from_the_prefix_cache_and_says_so(client, server):
    prompt = "a prompt seen twice " * 40  # 160+ tokens: at least two full 64-token pages
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 128 and cached % 64 == 0 and cached < second.usage.prompt_tokens
    assert second.choices[0].text == first.choices[0].text
    metrics = scrape.parse(httpx.get(server.url + "/metrics").text)
    hits, queries = scrape.value(metrics, "labkit:prefix_cache_hits_total"), \
        scrape.value(metrics, "labkit:prefix_cache_queries_total")
    assert hits >= cached and queries >= 2 * second.usage.prompt_tokens
