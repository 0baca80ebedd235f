"""Issue 11, the router and scale side: each failure reproduced against real servers on loopback, and in
each test the requests other than the bad one must come through whole.

- `labkit up` drains on SIGTERM: new requests 503, in-flight ones finish within --drain-timeout, the rest
  end with an OpenAI-shaped error (an error event and [DONE] for a stream), never a cut connection;
- scale-down lets the drained replica's stream finish (its own grace is the pool's drain timeout);
- bad header bytes, deeply nested JSON, anything uncaught: OpenAI-shaped JSON, never a plain-text 500;
- the router asks for the API key on every /v1 route; Host allow-list; slow headers and slow bodies.

The router-level tests run a real router (uvicorn, in a thread) in front of a stand-in replica, so they
take seconds; the two process tests run `labkit up` / a replica pool of the default model.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from loopback import background_asgi, metric, read_body, wait_for

from labkit.config import RouterConfig, ScaleConfig
from labkit.route import Router, StaticPool, route
from labkit.route.handle import RouterHandle
from labkit.scale import up

pytestmark = pytest.mark.integration

KEY = "sesame"
SERVE_ARGS = ["--device", "cpu", "--dtype", "float32"]


# -- a stand-in replica, for the router-level tests ---------------------------------------------------------
SEEN_HEADERS: list[list[tuple[bytes, bytes]]] = []


async def stand_in(scope, receive, send):
    """POST /v1/completions: `{"events": N, "interval": s}` streams N events then [DONE] (N < 0: until the
    client leaves); `{"sleep": s}` answers JSON after s seconds; `{"die_after": N}` streams N events and
    half of another, then drops the connection. GET /v1/models lists one model. Records request headers."""
    if scope["type"] != "http":
        return
    SEEN_HEADERS.append(list(scope["headers"]))
    body = await read_body(receive)
    if scope["path"] == "/v1/models":
        payload = json.dumps({"object": "list", "data": [{"id": "stand-in", "object": "model"}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        return await send({"type": "http.response.body", "body": payload})
    fields = json.loads(body) if body else {}
    gone = asyncio.Event()  # the client (the router) left: stop, as a replica would

    async def watch():
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await answer(fields, send, gone)
    finally:
        watcher.cancel()


async def pause(gone: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(gone.wait(), seconds)
    except TimeoutError:
        pass


async def answer(fields: dict, send, gone: asyncio.Event):
    if "events" in fields or "die_after" in fields:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        count = fields.get("events", fields.get("die_after"))
        i = 0
        while (count < 0 or i < count) and not gone.is_set():
            chunk = json.dumps({"choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}]}).encode()
            await send({"type": "http.response.body", "body": b"data: " + chunk + b"\n\n", "more_body": True})
            await pause(gone, fields.get("interval", 0.01))
            i += 1
        if "die_after" in fields:
            await send({"type": "http.response.body", "body": b'data: {"choices": [{"te', "more_body": True})
            raise RuntimeError("the stand-in replica dies mid-event")
        final = json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}).encode()
        return await send({"type": "http.response.body", "body": b"data: " + final + b"\n\ndata: [DONE]\n\n"})
    await pause(gone, fields.get("sleep", 0))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"choices": [{"text": "ok",
                                                                               "finish_reason": "stop"}]}).encode()})


@pytest.fixture(scope="module")
def upstream_url():
    with background_asgi(stand_in) as url:
        yield url


def read_stream(url: str, body: dict, headers: dict | None = None, timeout: float = 60) -> dict:
    """A streamed request's outcome: status, its data lines, whether it ended with [DONE], its finish
    reason and error code (if any), or the exception if the connection was cut."""
    out = {"status": None, "lines": [], "cut": None}
    try:
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, headers=headers,
                          timeout=timeout) as response:
            out["status"] = response.status_code
            out["content_type"] = response.headers.get("content-type", "")
            out["replica"] = response.headers.get("x-labkit-replica")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    out["lines"].append(line)
    except httpx.HTTPError as err:
        out["cut"] = repr(err)
    events = [json.loads(line[5:]) for line in out["lines"] if line != "data: [DONE]"]
    out["done"] = bool(out["lines"]) and out["lines"][-1] == "data: [DONE]"
    out["tokens"] = sum(1 for e in events if "choices" in e)
    out["finish"] = next((c.get("finish_reason") for e in reversed(events) for c in e.get("choices", [])
                          if c.get("finish_reason")), None)
    out["error"] = next((e["error"] for e in events if "error" in e), None)
    return out


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}, error
    if code is not None:
        assert error["code"] == code, error
    return error


def raw_request(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def parse_raw(reply: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        chunks, rest = [], body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if not int(size, 16):
                break
            chunks.append(rest[:int(size, 16)])
            rest = rest[int(size, 16) + 2:]
        body = b"".join(chunks)
    return int(lines[0].split()[1]), headers, json.loads(body)


class BackgroundStream:
    """A legitimate stream running while a test throws bad input at the router: it must still finish whole."""

    def __init__(self, url: str, events: int = 30, interval: float = 0.05, headers: dict | None = None):
        self._pool = ThreadPoolExecutor(1)
        self.future = self._pool.submit(read_stream, url, {"events": events, "interval": interval}, headers)

    def result(self) -> dict:
        outcome = self.future.result(60)
        self._pool.shutdown()
        assert outcome["status"] == 200 and outcome["done"] and outcome["finish"] == "length", outcome
        assert outcome["error"] is None and outcome["cut"] is None, outcome
        return outcome


# -- item 5: router errors are OpenAI-shaped -------------------------------------------------------------------
class BrokenRouter(Router):
    """A router with a bug on purpose: it raises before answering, or after a stream's first event."""

    async def _pass_through(self, upstream, replica, exchange):
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            await exchange.send({"type": "http.response.start", "status": 200,
                                 "headers": [(b"content-type", b"text/event-stream")]})
            await exchange.send_events(b'data: {"choices": []}\n\n')
            await upstream.aclose()
        raise RuntimeError("a bug in the router")


def test_bad_header_bytes_deep_json_and_uncaught_errors_get_openai_json_and_nobody_else_notices(upstream_url):
    with route([upstream_url], policy="prefix_affinity") as router, \
            route({"a": StaticPool([upstream_url], name="a"), "b": StaticPool([upstream_url], name="b")}) as two:
        background = BackgroundStream(router.url)
        host = router.url.removeprefix("http://")
        body = b'{"sleep": 0}'
        for name in (b"x-anything", b"x-session-id", b"x-request-id", b"authorization"):  # not UTF-8: \xff\xfe
            reply = raw_request(router.url, b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() +
                                b"\r\nContent-Type: application/json\r\n" + name + b": caf\xe9 \xff\xfe\r\n"
                                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            status, headers, payload = parse_raw(reply)
            assert status == 200 and headers["content-type"] == "application/json", reply[:300]
            assert payload["choices"][0]["text"] == "ok"
        assert any((b"x-request-id", b"caf\xe9 \xff\xfe") in seen for seen in SEEN_HEADERS)  # byte for byte
        deep = b'{"prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        response = httpx.post(router.url + "/v1/completions", content=deep, timeout=30,
                              headers={"content-type": "application/json"})
        assert "nested too deeply" in assert_openai_error(response, 400, "invalid_json")["message"]
        assert_openai_error(httpx.post(router.url + "/v1/completions", content=b"[1, 2]"), 400, "invalid_json")
        assert_openai_error(httpx.post(router.url + "/v1/completions", content=b"\xff{"), 400, "invalid_json")
        assert_openai_error(httpx.post(two.url + "/v1/completions", json={"model": {"a": 1}}), 400, "invalid_type")
        assert_openai_error(httpx.post(two.url + "/v1/completions", json={"model": ["a"]}), 400, "invalid_type")
        assert_openai_error(httpx.get(router.url + "/nowhere"), 404, "not_found")
        # a replica that dies half-way through an event: the client gets whole events, an error and [DONE]
        died = read_stream(router.url, {"die_after": 3})
        assert died["status"] == 200 and died["tokens"] == 3 and died["done"] and died["cut"] is None, died
        assert died["error"]["code"] == "replica_failed", died
        background.result()

    config = RouterConfig(port=0)
    broken = RouterHandle(BrokenRouter(StaticPool([upstream_url]), config), config)
    try:
        error = assert_openai_error(httpx.post(broken.url + "/v1/completions", json={"sleep": 0}), 500,
                                    "internal_error")
        assert "RuntimeError" in error["message"]
        stream = read_stream(broken.url, {"events": 5})
        assert stream["status"] == 200 and stream["done"] and stream["cut"] is None, stream
        assert stream["error"]["code"] == "internal_error" and stream["lines"][0] == 'data: {"choices": []}'
        assert httpx.post(broken.url + "/v1/completions", json={"sleep": 0}).status_code == 500  # still serving
    finally:
        broken.stop()


# -- item 5: the API key, on every /v1 route ------------------------------------------------------------------
def test_the_router_asks_for_the_api_key_on_every_v1_route(upstream_url):
    with route([upstream_url], config=RouterConfig(api_key=KEY)) as router:
        background = BackgroundStream(router.url, headers={"Authorization": f"Bearer {KEY}"})
        attempts = [None, "", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}",
                    f"bearer{KEY}", b"Bearer \xff\xfe"]
        for auth in attempts:
            headers = {} if auth is None else {"Authorization": auth}
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
                                 ("GET", "/v1/models/stand-in"), ("GET", "/v1/nothing")):
                response = httpx.request(method, router.url + path, headers=headers, json={"sleep": 0})
                assert_openai_error(response, 401, "invalid_api_key")
                assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": f"Bearer {KEY}"}
        models = httpx.get(router.url + "/v1/models", headers=good)
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["stand-in"]
        assert httpx.post(router.url + "/v1/completions", headers=good, json={"sleep": 0}).status_code == 200
        assert (b"authorization", f"Bearer {KEY}".encode()) in SEEN_HEADERS[-1]  # the replica checks it too
        assert httpx.post(router.url + "/v1/completions", headers={"Authorization": f"BEARER  {KEY}"},
                          json={"sleep": 0}).status_code == 200
        for probe in ("/health", "/ready", "/metrics"):  # probes and metrics stay open, as on a replica
            assert httpx.get(router.url + probe).status_code == 200
        assert metric(httpx.get(router.url + "/metrics").text, 'labkit:router_rejected_total{status="401"}') >= 1
        background.result()


# -- item 6: Host allow-list, slow headers, slow bodies --------------------------------------------------------
def test_a_foreign_host_header_is_refused_and_allowed_hosts_adds_names(upstream_url):
    with route([upstream_url]) as router:
        background = BackgroundStream(router.url)
        for host in ("attacker.example", "attacker.example:80", "127.0.0.1.attacker.example", "[::2]:1"):
            response = httpx.get(router.url + "/v1/models", headers={"Host": host})
            assert_openai_error(response, 400, "host_not_allowed")
        for host in ("localhost", f"127.0.0.1:{router.port}", "[::1]:80", "LOCALHOST:1"):
            assert httpx.get(router.url + "/v1/models", headers={"Host": host}).status_code == 200
        background.result()
    with route([upstream_url], config=RouterConfig(allowed_hosts=("lab.example",))) as router:
        assert httpx.get(router.url + "/v1/models", headers={"Host": "lab.example:8000"}).status_code == 200
        assert httpx.get(router.url + "/v1/models", headers={"Host": "other.example"}).status_code == 400


def test_slow_headers_are_closed_and_a_slow_body_gets_408(upstream_url):
    config = RouterConfig(header_timeout_s=0.5, body_timeout_s=0.5)
    with route([upstream_url], config=config) as router:
        background = BackgroundStream(router.url)
        host, port = router.url.removeprefix("http://").split(":")
        dribblers = []
        for _ in range(20):  # slowloris: a request line and one header, then nothing
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            dribblers.append(sock)
        started = time.monotonic()
        for sock in dribblers:
            sock.settimeout(5)
            assert sock.recv(100) == b""  # closed by the router
            sock.close()
        assert time.monotonic() - started < 3
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"slee")
            reply = b""
            while chunk := sock.recv(65536):  # the answer, then the connection closes
                reply += chunk
        status, headers, payload = parse_raw(reply)
        assert status == 408 and payload["error"]["code"] == "body_timeout" and headers["connection"] == "close"
        assert httpx.get(router.url + "/health").status_code == 200
        background.result()


# -- item 4: draining, in process (the router alone) ------------------------------------------------------------
def test_stopping_the_router_drains_then_ends_what_is_left_with_errors_never_a_cut(upstream_url):
    config = RouterConfig(port=0, drain_timeout_s=2.0)
    handle = RouterHandle(Router(StaticPool([upstream_url]), config), config)
    with ThreadPoolExecutor(8) as pool:
        short = [pool.submit(read_stream, handle.url, {"events": 20, "interval": 0.05}) for _ in range(3)]
        endless = [pool.submit(read_stream, handle.url, {"events": -1, "interval": 0.05}) for _ in range(2)]
        plain_short = pool.submit(httpx.post, handle.url + "/v1/completions", json={"sleep": 1.0}, timeout=30)
        plain_long = pool.submit(httpx.post, handle.url + "/v1/completions", json={"sleep": 30}, timeout=30)
        deadline = time.monotonic() + 10
        while handle.router.in_flight() < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        stopper = pool.submit(handle.stop)
        time.sleep(0.3)
        late = httpx.post(handle.url + "/v1/completions", json={"sleep": 0})
        ready = httpx.get(handle.url + "/ready")
        stopper.result(30)
        stopped_s = time.monotonic() - started
        outcomes = [f.result(30) for f in short + endless]
        plain = [plain_short.result(30), plain_long.result(30)]
    assert_openai_error(late, 503, "shutting_down")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    for outcome in outcomes:
        assert outcome["status"] == 200 and outcome["done"] and outcome["cut"] is None, outcome
    for outcome in outcomes[:3]:  # finished within the grace: untouched
        assert outcome["finish"] == "length" and outcome["error"] is None and outcome["tokens"] == 21, outcome
    for outcome in outcomes[3:]:  # still running when it expired: an error event, then [DONE]
        assert outcome["error"]["code"] == "cancelled" and outcome["lines"][-2].startswith('data: {"error"'), outcome
    assert plain[0].status_code == 200 and plain[0].json()["choices"][0]["text"] == "ok"
    assert_openai_error(plain[1], 503, "cancelled")
    assert 2.0 <= stopped_s < 7, stopped_s


# -- item 4: draining, for real: SIGTERM to `labkit up`, and scale-down ----------------------------------------
def test_sigterm_on_labkit_up_drains_every_in_flight_request():
    """One replica of the default model; short streams, one stream that cannot finish within the 6 s
    drain timeout, and one plain request that cannot either."""
    command = [sys.executable, "-m", "labkit.cli", "up", "--replicas", "1", "--port", "0", *SERVE_ARGS,
               "--max-num-seqs", "4", "--drain-timeout", "6", "--api-key", KEY]
    env = {k: v for k, v in os.environ.items() if k != "LABKIT_API_KEY"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        found = re.search(r"on (http://\S+) \(", line)
        assert found, line + (process.stderr.read() if process.poll() is not None else "")
        url, replicas = found.group(1), child_pids(process.pid)
        auth = {"Authorization": f"Bearer {KEY}"}
        assert_openai_error(httpx.get(url + "/v1/models"), 401, "invalid_api_key")
        assert [m["id"] for m in httpx.get(url + "/v1/models", headers=auth).json()["data"]] == \
            ["smollm2-135m-instruct"]
        short = {"prompt": "Count:", "max_tokens": 6, "ignore_eos": True, "temperature": 0}
        long = {"prompt": "A long story:", "max_tokens": 4000, "ignore_eos": True, "temperature": 0}
        with ThreadPoolExecutor(6) as pool:
            first = pool.submit(read_stream, url, long, auth, 120)
            deadline = time.monotonic() + 60
            while int(metric(httpx.get(url + "/metrics").text, "labkit:router_requests_in_flight")) < 1 \
                    and time.monotonic() < deadline and not first.done():
                time.sleep(0.05)
            assert not first.done(), first.result()  # the long stream must still run when SIGTERM comes
            shorts = [pool.submit(read_stream, url, short, auth, 120) for _ in range(2)]
            plain = pool.submit(httpx.post, url + "/v1/completions", json=long, headers=auth, timeout=120)
            time.sleep(1.0)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            late = httpx.post(url + "/v1/completions", json=short, headers=auth, timeout=30)
            outcomes = [f.result(120) for f in [first, *shorts]]
            answer = plain.result(120)
        assert process.wait(60) == 0
        stopped_s = time.monotonic() - started
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"\nlabkit up SIGTERM: stopped in {stopped_s:.1f} s (drain timeout 6 s); streams: "
          f"{[(o['tokens'], o['finish'], (o['error'] or {}).get('code')) for o in outcomes]}; plain {answer.status_code}")
    assert_openai_error(late, 503, "shutting_down")
    for outcome in outcomes:  # none cut: each ends with [DONE], complete or with an error event
        assert outcome["status"] == 200 and outcome["done"] and outcome["cut"] is None, outcome
        assert (outcome["finish"] == "length") != (outcome["error"] is not None), outcome
    assert outcomes[0]["error"]["code"] == "cancelled" and outcomes[0]["tokens"] > 0, outcomes[0]
    assert all(o["finish"] == "length" and o["error"] is None for o in outcomes[1:]), outcomes  # within the grace
    assert_openai_error(answer, 503, "cancelled")
    assert 6 <= stopped_s < 30, stopped_s
    assert "draining" in output and "stopped" in output
    assert wait_for(lambda: no_orphans(replicas), 10)


def test_scale_down_lets_the_drained_replicas_stream_finish():
    """Two replicas of the default model, a long stream on each; the pool is scaled to one. The drained
    replica's stream must finish (finish_reason length) although it runs past 10 s, the replicas' own
    default grace: the pool's drain timeout (60 s here) is passed to each replica."""
    lab = up("smollm2-135m-instruct", replicas=2, policy="round_robin", serve_args=SERVE_ARGS, api_key=KEY,
             scale=ScaleConfig(drain_timeout_s=60))
    pids = [r.pid for r in lab.pool.replicas()]
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        for replica in lab.pool.replicas():  # the pool's replicas ask for the router's key
            assert "--drain-timeout\x0060\x00" in open(f"/proc/{replica.pid}/cmdline").read()
            assert httpx.get(replica.url + "/v1/models").status_code == 401
            assert httpx.get(replica.url + "/v1/models", headers=auth).status_code == 200
        # how fast does a replica decode here? Size the streams to outlast the replicas' default grace
        probe = read_stream(lab.url, {"prompt": "Hi", "max_tokens": 32, "ignore_eos": True}, auth)
        assert probe["finish"] == "length", probe
        started = time.monotonic()
        read_stream(lab.url, {"prompt": "Hi", "max_tokens": 32, "ignore_eos": True}, auth)
        rate = 32 / (time.monotonic() - started)
        body = {"prompt": "A long story:", "max_tokens": max(150, min(1500, int(rate * 12))), "ignore_eos": True,
                "temperature": 0}
        newest = max(lab.pool.ready(), key=lambda r: r.started_at)
        with ThreadPoolExecutor(2) as pool:
            streams = [pool.submit(read_stream, lab.url, body, auth, 180) for _ in range(2)]
            deadline = time.monotonic() + 30
            while lab.router.load.get(newest.name, 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            scaled = time.monotonic()
            lab.pool.scale_to(1)
            assert wait_for(lambda: newest not in lab.pool.ready(), 2)
            during = httpx.post(lab.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=auth,
                                timeout=60)
            outcomes = [f.result(180) for f in streams]
        drained_s = time.monotonic() - scaled
        assert wait_for(lambda: newest.process.poll() is not None, 30)
        print(f"\nscale-down: {body['max_tokens']}-token streams at ~{rate:.0f} tok/s; the drained replica's "
              f"finished {drained_s:.1f} s after the scale-down; replica exit status {newest.process.returncode}")
        assert newest.name in [o["replica"] for o in outcomes]  # one stream was on the drained replica
        assert during.status_code == 200 and during.headers["x-labkit-replica"] != newest.name
        for outcome in outcomes:
            assert outcome["done"] and outcome["error"] is None and outcome["finish"] == "length", outcome
        assert newest.process.returncode == 0  # it drained and exited by itself: not killed
        assert len(lab.pool.ready()) == 1
    finally:
        lab.stop()
    assert wait_for(lambda: no_orphans(pids), 10)


# -- helpers ------------------------------------------------------------------------------------------------




def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def no_orphans(pids) -> bool:
    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone in all but name
            return stat.read().split(") ", 1)[1].startswith("Z")
    return all(gone(pid) for pid in pids)
