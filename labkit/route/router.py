"""The router: one OpenAI-compatible front that forwards each request to a replica, streams included.

    router = Router(pool, RouterConfig(policy="prefix_affinity"))        # or Router({"model-a": pool_a, ...})

It is a plain ASGI app (no framework between the socket and the forward, so it adds little latency). For
each request it reads the body once, picks the pool by the `model` field, asks the policy for a replica
among the healthy ones that are not full, and passes the response through byte for byte. A replica that
fails before its first byte (connection refused or dropped, or a 429/503 of its own) costs one retry on
another replica; one that fails mid-stream ends the stream with an error event. A client that hangs up
cancels the upstream request, so the replica frees its KV memory. Nothing queues in the router: with every
replica full the answer is 429 with Retry-After, with none healthy 503.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Mapping

import httpx

from ..config import RouterConfig
from ..monitor.events import EventBus
from ..monitor.metrics import CONTENT_TYPE, Counter, Gauge, Registry
from .asgi import BodyTooLarge, error_body, read_body as _read_body, respond as _respond
from .policies import make_policy

FORWARDED = (b"POST", {"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})
REQUEST_HEADERS = {"content-type", "authorization", "x-request-id", "accept"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "date", "server"}
RETRYABLE_STATUS = {429, 503}


class Router:
    """An ASGI app over one pool (or a mapping of model name → pool, for routing by model)."""

    def __init__(self, pools, config: RouterConfig | None = None, *, bus: EventBus | None = None, seed: int | None = None):
        self.config = config or RouterConfig()
        self.pools: dict[str, object] = dict(pools) if isinstance(pools, Mapping) else {
            getattr(pools, "model", None) or "default": pools}
        if not self.pools:
            raise ValueError("a router needs at least one pool")
        self.policy = make_policy(self.config.policy, seed)
        self.bus = bus or EventBus()
        self.load: dict[str, int] = {}  # replica name -> requests in flight through this router
        self.latencies: deque[tuple[float, float]] = deque(maxlen=4096)  # (finished at, seconds) of successes
        self._model_ids: dict[str, set[str]] = {}
        self.client: httpx.AsyncClient | None = None
        r = self.registry = Registry()
        r.add(Gauge("labkit:replicas", "Healthy replicas behind the router.",
                    lambda: sum(len(p.ready()) for p in self.pools.values())))
        r.add(Gauge("labkit:replicas_desired", "Replicas wanted (by the autoscaler or the fixed size).",
                    lambda: sum(getattr(p, "target", len(p.ready())) for p in self.pools.values())))
        r.add(Gauge("labkit:router_requests_in_flight", "Requests the router is forwarding now.",
                    lambda: sum(self.load.values())))
        self.requests = r.add(Counter("labkit:router_requests_total", "Requests forwarded, by replica and policy.",
                                      ("replica", "policy")))
        self.retries = r.add(Counter("labkit:router_retries_total", "Requests retried on another replica."))
        self.rejected = r.add(Counter("labkit:router_rejected_total", "Requests the router answered itself.",
                                      ("status",)))

    # -- signals for the autoscaler and the notebooks -------------------------------------------------
    def in_flight(self, pool=None) -> int:
        pools = [pool] if pool is not None else self.pools.values()
        return sum(self.load.get(r.name, 0) for p in pools for r in p.ready())

    def p99_latency(self, window_s: float = 10.0, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        recent = sorted(s for t, s in list(self.latencies) if t >= now - window_s)
        return recent[min(len(recent) - 1, int(0.99 * len(recent)))] if recent else None

    # -- ASGI ------------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        method, path = scope["method"].encode(), scope["path"]
        if method == FORWARDED[0] and path in FORWARDED[1]:
            return await self._forward(scope, receive, send)
        if method == b"GET" and path == "/health":
            return await _respond(send, 200, b'{"status":"ok"}')
        if method == b"GET" and path == "/ready":
            ready = any(p.ready() for p in self.pools.values())
            return await _respond(send, 200 if ready else 503, json.dumps(
                {"status": "ready" if ready else "not ready",
                 "replicas": {name: len(p.ready()) for name, p in self.pools.items()}}).encode())
        if method == b"GET" and path == "/metrics":
            return await _respond(send, 200, self.registry.render().encode(), CONTENT_TYPE.encode())
        if method == b"GET" and path == "/v1/models":
            auth = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() == b"authorization"}
            cards = [card for name in self.pools for card in await self._cards(name, auth)]
            return await _respond(send, 200, json.dumps({"object": "list", "data": cards}).encode())
        await _respond(send, 404, error_body(404, f"No route {scope['method']} {path} here.", "not_found"))

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start_client(self) -> None:
        c = self.config
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(c.request_timeout_s, connect=c.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))

    # -- forwarding ------------------------------------------------------------------------------------
    async def _forward(self, scope, receive, send):
        try:
            body = await _read_body(receive, self.config.max_body_bytes)
        except BodyTooLarge:
            return await _respond(send, 413, error_body(
                413, f"The request body is larger than the router's limit of {self.config.max_body_bytes} bytes.",
                "body_too_large"))
        if body is None:
            return  # the client left before sending its body
        try:
            fields = json.loads(body) if body else {}
            if not isinstance(fields, dict):
                raise ValueError
        except ValueError:
            return await _respond(send, 400, error_body(400, "The body is not a JSON object.", "invalid_json"))
        auth = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() == b"authorization"}
        pool_name = await self._pool_for(fields.get("model"), auth)
        if pool_name is None:
            known = sorted({i for ids in self._model_ids.values() for i in ids} | set(self.pools))
            return await _respond(send, 404, error_body(
                404, f"The model '{fields.get('model')}' is not served here; models: {', '.join(known)}.",
                "model_not_found"))
        if fields.get("model") == pool_name and pool_name not in self._model_ids.get(pool_name, ()):
            del fields["model"]  # the pool's own name: each replica serves it as its default model
            body = json.dumps(fields).encode()
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(watch())  # a client gone is noticed at once, even while waiting
        pump = asyncio.create_task(self._dispatch(scope["path"], body, fields, headers, self.pools[pool_name], send))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                if not task.done():
                    task.cancel()  # a client gone cancels the upstream request (its connection is closed)
            await asyncio.gather(pump, watcher, return_exceptions=True)

    def _key(self, fields: dict, headers: dict) -> str | None:
        session = headers.get("x-session-id") or fields.get("user")
        if session:
            return f"session:{session}"
        prompt = fields.get("messages") or fields.get("prompt") or fields.get("input")
        if prompt is None:
            return None
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, separators=(",", ":"))
        return text[: self.config.affinity_prefix_chars]

    def _pick(self, pool, key, tried):
        ready = [r for r in pool.ready() if r not in tried]
        if not ready:
            return None, 503
        cap = self.config.max_outstanding_per_replica
        free = [r for r in ready if self.load.get(r.name, 0) < cap]
        if not free:
            return None, 429
        return self.policy.choose(free, self.load, key if self.policy.name == "prefix_affinity" else None), 200

    async def _dispatch(self, path, body, fields, headers, pool, send):
        forward = {k: v for k, v in headers.items() if k in REQUEST_HEADERS}
        key = self._key(fields, headers) if self.policy.name == "prefix_affinity" else None
        tried, status, last_error = [], 503, None
        for attempt in range(2):
            replica, status = self._pick(pool, key, tried)
            if replica is None:
                break
            tried.append(replica)
            if attempt:
                self.retries.inc()
            self.load[replica.name] = self.load.get(replica.name, 0) + 1
            started = time.monotonic()
            try:
                request = self.client.build_request("POST", replica.url + path, content=body, headers=forward)
                try:
                    upstream = await self.client.send(request, stream=True)
                except httpx.TimeoutException as err:
                    if isinstance(err, httpx.ConnectTimeout):
                        raise
                    self.rejected.inc(status="504")
                    return await _respond(send, 504, error_body(504, "The replica did not answer in time.", "timeout"))
                if upstream.status_code in RETRYABLE_STATUS and attempt == 0 and len(pool.ready()) > 1:
                    await upstream.aclose()
                    status, last_error = upstream.status_code, f"replica answered {upstream.status_code}"
                    continue
                self.requests.inc(replica=replica.name, policy=self.policy.name)
                await self._pass_through(upstream, replica, send)
                if upstream.status_code == 200:
                    self.latencies.append((time.monotonic(), time.monotonic() - started))
                return
            except (httpx.TransportError, OSError) as err:  # refused, reset or dropped before the first byte
                last_error = f"{replica.name} failed: {type(err).__name__}"
                pool.report_failure(replica)
                status = 502
            finally:
                self.load[replica.name] -= 1
        self.rejected.inc(status=str(status))
        if status == 429:
            message, code = "Every replica is at its in-flight limit; retry after the Retry-After delay.", "router_full"
        elif status == 502:
            message, code = f"The replica failed before answering, and so did the retry ({last_error}).", "replica_failed"
        else:
            message, code = "No healthy replica can take this request now (starting, scaling or down).", "no_replicas"
            status = 503
        await _respond(send, status, error_body(status, message, code),
                       extra=[(b"retry-after", str(self.config.retry_after_s).encode())])

    async def _pass_through(self, upstream: httpx.Response, replica, send):
        headers = [(k, v) for k, v in upstream.headers.raw if k.lower().decode() not in HOP_BY_HOP]
        headers.append((b"x-labkit-replica", replica.name.encode()))
        await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
        try:
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError:  # the replica died mid-response: end it cleanly, with an error event for SSE
            if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                message = f"The replica {replica.name} failed mid-stream; the response is incomplete."
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + error_body(502, message, "replica_failed") + b"\n\n"})
        finally:
            await upstream.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- routing by model name -------------------------------------------------------------------------
    async def _pool_for(self, model, auth: dict) -> str | None:
        if model is None or len(self.pools) == 1:  # one pool: its replicas answer for their own model names
            return next(iter(self.pools))
        for name in self.pools:
            if model == name or model in self._model_ids.get(name, ()):
                return name
        for name in self.pools:
            if name not in self._model_ids:
                await self._cards(name, auth)
                if model in self._model_ids.get(name, ()):
                    return name
        return None

    async def _cards(self, name: str, auth: dict | None = None) -> list[dict]:
        """The model cards of one pool, from its first replica that answers (with the client's key, if any)."""
        for replica in self.pools[name].ready():
            try:
                response = await self.client.get(replica.url + "/v1/models", headers=auth, timeout=2.0)
                cards = response.json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            self._model_ids[name] = {c["id"] for c in cards}
            return cards
        return []
