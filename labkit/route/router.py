"""The router: one OpenAI-compatible front that forwards each request to a replica, streams included.

    router = Router(pool, RouterConfig(policy="prefix_affinity"))        # or Router({"model-a": pool_a, ...})

It is a plain ASGI app (no framework between the socket and the forward, so it adds little latency). It
forwards the API (completions, chat, embeddings, responses, tokenize, detokenize, GET /v1/models/{id} and
/version) and answers /v1/models, /health, /ready and /metrics itself. For each request it reads the body
once, picks the pool by the `model` field (or the id in the path), asks the policy for a replica among the
healthy ones that are not full, and passes the response through byte for byte. A replica that
fails before its first byte (connection refused or dropped, or a 429/503 of its own) costs one retry on
another replica; one that fails mid-stream ends the stream with an error event and `[DONE]`. A client that
hangs up cancels the upstream request, so the replica frees its KV memory. Nothing queues in the router:
with every replica full the answer is 429 with Retry-After, with none healthy 503.

Every request ends with a whole answer or an OpenAI-shaped error, never a cut connection: event streams
are passed on in whole events (so an error event can always follow), other bodies whole; anything
unexpected is a 500 JSON (or an error event and `[DONE]` once a stream has started). `drain()`, which the
router's server runs when it stops, refuses new requests with 503 `shutting_down`, gives those in flight
`drain_timeout_s`, then ends each one still running with a 503 `cancelled` error the same way.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Mapping

import httpx

from ..config import RouterConfig
from ..monitor.events import EventBus
from ..monitor.percentiles import percentile
from ..monitor import federate
from ..monitor.metrics import CONTENT_TYPE, FleetMetrics
from ..monitor.tracing import TRACE_HEADERS, Tracing
from ..server.access_log import AccessLog, RequestContextMiddleware
from ..server.errors import APIError
from ..server.hardening import BodyTimeout, read_body_within
from .asgi import Exchange, complete_events, respond as _respond, respond_error
from .policies import make_policy

log = logging.getLogger("labkit.route")

FORWARDED = ("POST", {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/tokenize",
                      "/detokenize"})
KEYED = ("/tokenize", "/detokenize")  # outside /v1/ but the replica's tokenizer: the API key guards them too
MODEL_PATH = "/v1/models/"  # GET /v1/models/{id}: routed by the id in the path, as POSTs are by their `model`
REQUEST_HEADERS = {b"content-type", b"authorization", b"x-request-id", b"accept", *TRACE_HEADERS}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "date", "server"}
RETRYABLE_STATUS = {429, 503}
MAX_EVENT_BYTES = 1 << 20  # an event stream that sends this much without a blank line is passed on as it comes
END_TIMEOUT_S = 2.0  # most seconds spent ending one request with an error (a client that reads nothing)


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
        self._key_bytes = self.config.api_key.encode() if self.config.api_key else None
        self.client: httpx.AsyncClient | None = None
        self.accepting = True  # False once draining: new requests get 503
        self.exchanges: set[Exchange] = set()  # every HTTP request being answered now
        self._drain_deadline: float | None = None
        c = self.config  # each request passes through the access log and, when tracing, a span of the router's
        self.access_log = AccessLog(c.access_log, service="labkit-router") if c.access_log else None
        self.tracing = Tracing(c.otlp_traces_endpoint, "labkit-router") if c.otlp_traces_endpoint else None
        self._front = RequestContextMiddleware(self._exchange, access_log=self.access_log, tracing=self.tracing)
        self.metrics = FleetMetrics(replicas=lambda: sum(len(p.ready()) for p in self.pools.values()),
                                    desired=lambda: sum(getattr(p, "target", len(p.ready()))
                                                        for p in self.pools.values()),
                                    in_flight=lambda: sum(self.load.values()), bus=self.bus)
        self.requests, self.retries, self.rejected = self.metrics.requests, self.metrics.retries, self.metrics.rejected

    async def exposition(self) -> str:
        """The router's own series, then its healthy replicas' engine series added up (monitor/federate.py), so
        one scrape of the router shows the fleet: tokens, latency histograms, goodput. A replica that does not
        answer within a second is left out of this scrape."""
        async def scrape(replica) -> str:
            try:
                response = await self.client.get(replica.url + "/metrics", timeout=1.0)
                return response.text if response.status_code == 200 else ""
            except httpx.HTTPError:
                return ""

        replicas = [r for pool in self.pools.values() for r in pool.ready()]
        texts = await asyncio.gather(*(scrape(r) for r in replicas)) if self.client is not None else []
        return self.metrics.render() + federate.render([t for t in texts if t])

    # -- signals for the autoscaler and the notebooks -------------------------------------------------
    def in_flight(self, pool=None) -> int:
        pools = [pool] if pool is not None else self.pools.values()
        return sum(self.load.get(r.name, 0) for p in pools for r in p.ready())

    def p99_latency(self, window_s: float = 10.0, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        return percentile((s for t, s in list(self.latencies) if t >= now - window_s), 0.99)

    # -- draining ------------------------------------------------------------------------------------
    async def drain(self, grace_s: float | None = None) -> None:
        """Refuse new requests (503 `shutting_down`), let those in flight finish for `grace_s` (default
        `config.drain_timeout_s`), then end each one still running with an OpenAI-shaped 503 `cancelled`
        error (an error event and `[DONE]` for a stream). Returns once every request has ended."""
        loop = asyncio.get_running_loop()
        grace = self.config.drain_timeout_s if grace_s is None else grace_s
        self.accepting = False
        self._drain_deadline = loop.time() + grace
        while self.exchanges and loop.time() < self._drain_deadline:
            await asyncio.sleep(0.05)
        if self.exchanges:
            log.warning("router: %d request(s) still running after the %g s drain timeout; ending them with an "
                        "error", len(self.exchanges), grace)
        for exchange in list(self.exchanges):
            exchange.expired = True
            exchange.task.cancel()
        deadline = loop.time() + END_TIMEOUT_S + 1
        while self.exchanges and loop.time() < deadline:
            await asyncio.sleep(0.02)

    def end_drain_now(self) -> None:
        """Cut the drain's grace short (a second Ctrl-C): requests still running end with an error at once."""
        self._drain_deadline = 0.0

    # -- ASGI ------------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] == "http":
            await self._front(scope, receive, send)

    async def _exchange(self, scope, receive, send):
        exchange = Exchange(send, asyncio.current_task())
        self.exchanges.add(exchange)
        try:
            await self._handle(scope, receive, exchange)
        except asyncio.CancelledError:
            if not exchange.expired:
                raise
            asyncio.current_task().uncancel()
            await self._end(exchange, APIError(
                503, f"The router shut down before this request finished (drain timeout "
                     f"{self.config.drain_timeout_s:g} s); it was cancelled.", code="cancelled"))
        except Exception as err:  # a bug or an input nothing above foresaw: still an OpenAI-shaped answer
            log.exception("router: unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await self._end(exchange, APIError(500, f"Internal error in the router: {type(err).__name__}.",
                                               code="internal_error"))
        finally:
            self.exchanges.discard(exchange)

    async def _end(self, exchange: Exchange, error: APIError) -> None:
        self.rejected.labels(status=str(error.status)).inc()
        try:
            async with asyncio.timeout(END_TIMEOUT_S):  # a client that reads nothing cannot hold the router
                await exchange.end_with(error)
        except Exception:  # the client is gone, or its connection is stuck: nothing more can be said
            pass

    async def _reject(self, send, error: APIError, extra=()) -> None:
        self.rejected.labels(status=str(error.status)).inc()
        await respond_error(send, error, extra)

    async def _handle(self, scope, receive, exchange: Exchange):
        method, path, send = scope["method"], scope["path"], exchange.send
        if path == "/v1" or path.startswith("/v1/") or path in KEYED:
            if self._key_bytes is not None and not self._authorized(scope["headers"]):
                return await self._reject(send, APIError(
                    401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"}))
            if not self.accepting:
                return await self._reject(send, APIError(503, "The router is shutting down.", code="shutting_down"),
                                          extra=[(b"connection", b"close")])
            if method == FORWARDED[0] and path in FORWARDED[1]:
                return await self._forward(scope, receive, exchange)
            if method == "GET" and path == "/v1/models":
                auth = [(k, v) for k, v in scope["headers"] if k == b"authorization"]
                cards = [card for name in self.pools for card in await self._cards(name, auth)]
                return await _respond(send, 200, json.dumps({"object": "list", "data": cards}).encode())
            if method == "GET" and path.startswith(MODEL_PATH) and len(path) > len(MODEL_PATH):
                return await self._forward(scope, receive, exchange, model=path[len(MODEL_PATH):])
        elif method == "GET" and path == "/version":  # the replicas' labkit, which serves the API
            return await self._forward(scope, receive, exchange)
        elif method == "GET" and path == "/health":
            return await _respond(send, 200, b'{"status":"ok"}')
        elif method == "GET" and path == "/ready":
            ready = self.accepting and any(p.ready() for p in self.pools.values())
            status = "ready" if ready else "draining" if not self.accepting else "not ready"
            return await _respond(send, 200 if ready else 503, json.dumps(
                {"status": status, "replicas": {name: len(p.ready()) for name, p in self.pools.items()}}).encode())
        elif method == "GET" and path == "/metrics":
            return await _respond(send, 200, (await self.exposition()).encode(), CONTENT_TYPE.encode())
        await self._reject(send, APIError(404, f"No route {method} {path} here.", code="not_found"))

    def _authorized(self, headers) -> bool:
        """The bearer token matches the key (compared in constant time, as bytes: any header byte is fine)."""
        value = next((v for k, v in headers if k == b"authorization"), b"")
        scheme, _, token = value.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key_bytes)

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                if self.access_log is not None:
                    self.access_log.close()
                if self.tracing is not None:
                    await asyncio.to_thread(self.tracing.shutdown)  # the spans still batched are sent now
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start_client(self) -> None:
        c = self.config
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(c.request_timeout_s, connect=c.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))

    # -- forwarding ------------------------------------------------------------------------------------
    async def _forward(self, scope, receive, exchange: Exchange, model: str | None = None):
        """Forward to a replica of the pool that serves `model` (the body's `model` field unless given)."""
        send, limit = exchange.send, self.config.max_body_bytes
        try:
            read = await read_body_within(receive, self.config.body_timeout_s, limit)
        except BodyTimeout:  # answered, and the connection closed: the rest of the body will not be read
            return await self._reject(send, APIError(
                408, f"The request body did not arrive within {self.config.body_timeout_s:g} s.",
                code="body_timeout"), extra=[(b"connection", b"close")])
        if read is None:
            return  # the client left before sending its body
        chunks, size = read
        if size > limit:
            return await self._reject(send, APIError(
                413, f"The request body is larger than the router's limit of {limit} bytes.", code="body_too_large"),
                extra=[(b"connection", b"close")])
        body = b"".join(chunks)
        try:
            fields = json.loads(body) if body else {}
            if not isinstance(fields, dict):
                raise ValueError
        except (ValueError, RecursionError) as err:  # RecursionError: nested deeper than Python's stack
            what = "nested too deeply" if isinstance(err, RecursionError) else "not a JSON object"
            return await self._reject(send, APIError(400, f"The body is {what}.", code="invalid_json"))
        auth = [(k, v) for k, v in scope["headers"] if k == b"authorization"]
        model = fields.get("model") if model is None else model
        if model is not None and not isinstance(model, str) and len(self.pools) > 1:
            return await self._reject(send, APIError(400, "Invalid value for 'model': a string is needed.",
                                                     code="invalid_type", param="model"))
        pool_name = await self._pool_for(model, auth)
        if pool_name is None:
            known = sorted({i for ids in self._model_ids.values() for i in ids} | set(self.pools))
            return await self._reject(send, APIError(
                404, f"The model '{model}' is not served here; models: {', '.join(known)}.", code="model_not_found",
                param="model"))
        if model == pool_name and "model" in fields and pool_name not in self._model_ids.get(pool_name, ()):
            del fields["model"]  # the pool's own name: each replica serves it as its default model
            body = json.dumps(fields).encode()  # nested no deeper than what was just parsed
        forward = [(k, v) for k, v in scope["headers"] if k in REQUEST_HEADERS]
        state = scope["state"]
        if state["span"] is not None:  # the replica's span becomes a child of the router's
            forward = [(k, v) for k, v in forward if k not in TRACE_HEADERS] + self.tracing.headers_for(state["span"])
        session = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-session-id"), None)

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(watch())  # a client gone is noticed at once, even while waiting
        pump = asyncio.create_task(self._dispatch(scope["method"], scope["path"], body, fields, forward, session,
                                                  self.pools[pool_name], exchange, state))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                if not task.done():
                    task.cancel()  # a client gone cancels the upstream request (its connection is closed)
            await asyncio.gather(pump, watcher, return_exceptions=True)
        if not pump.cancelled() and pump.exception() is not None:
            raise pump.exception()  # to __call__, which still answers

    def _key(self, fields: dict, session: str | None) -> str | None:
        session = session or fields.get("user")
        if session:
            return f"session:{session}"
        prompt = fields.get("messages") or fields.get("prompt") or fields.get("input")
        if prompt is None:
            return None
        try:
            text = prompt if isinstance(prompt, str) else json.dumps(prompt, separators=(",", ":"))
        except (ValueError, TypeError, RecursionError):
            return None
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

    async def _dispatch(self, method, path, body, fields, forward, session, pool, exchange: Exchange, state: dict):
        send = exchange.send
        key = self._key(fields, session) if self.policy.name == "prefix_affinity" else None
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
                request = self.client.build_request(method, replica.url + path, content=body, headers=forward)
                try:
                    upstream = await self.client.send(request, stream=True)
                except httpx.TimeoutException as err:
                    if isinstance(err, httpx.ConnectTimeout):
                        raise
                    return await self._reject(send, APIError(504, "The replica did not answer in time.",
                                                             code="timeout"))
                if upstream.status_code in RETRYABLE_STATUS and attempt == 0 and \
                        any(r is not replica for r in pool.ready()):  # a draining replica's 503 included
                    await upstream.aclose()
                    status, last_error = upstream.status_code, f"replica answered {upstream.status_code}"
                    continue
                self.requests.labels(replica=replica.name, policy=self.policy.name).inc()
                _note_replica(state, replica.name)
                if await self._pass_through(upstream, replica, exchange) and upstream.status_code == 200:
                    self.latencies.append((time.monotonic(), time.monotonic() - started))
                return
            except (httpx.TransportError, OSError) as err:  # refused, reset or dropped before the first byte
                last_error = f"{replica.name} failed: {type(err).__name__}"
                pool.report_failure(replica)
                status = 502
            finally:
                self.load[replica.name] -= 1
        if status == 429:
            message, code = "Every replica is at its in-flight limit; retry after the Retry-After delay.", "router_full"
        elif status == 502:
            message, code = f"The replica failed before answering, and so did the retry ({last_error}).", "replica_failed"
        else:
            message, code = "No healthy replica can take this request now (starting, scaling or down).", "no_replicas"
            status = 503
        await self._reject(send, APIError(status, message, code=code),
                           extra=[(b"retry-after", str(self.config.retry_after_s).encode())])

    async def _pass_through(self, upstream: httpx.Response, replica, exchange: Exchange) -> bool:
        """The replica's answer to the client: an event stream event by event, any other body whole (so a
        replica failing half-way is an error the client can read, never a cut). False if it failed."""
        headers = [(k, v) for k, v in upstream.headers.raw if k.lower().decode() not in HOP_BY_HOP]
        headers.append((b"x-labkit-replica", replica.name.encode()))
        start = {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
        try:
            if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
                try:
                    body = await upstream.aread()
                except httpx.TransportError as err:
                    await self._reject(exchange.send, self._upstream_error(err, replica))
                    return False
                await exchange.send(start)
                await exchange.send({"type": "http.response.body", "body": body})
                return True
            await exchange.send(start)
            pending, failure = b"", None
            try:
                async for chunk in upstream.aiter_raw():
                    pending += chunk
                    whole = complete_events(pending) or (len(pending) if len(pending) > MAX_EVENT_BYTES else 0)
                    if whole:
                        events, pending = pending[:whole], pending[whole:]
                        await exchange.send_events(events)
            except httpx.TransportError as err:  # the replica died mid-stream (or went silent too long)
                failure = self._upstream_error(err, replica)
            if failure is None:
                await exchange.send_events(pending, more_body=False)  # whatever the replica ended with, as is
                return True
            await self._end(exchange, failure)  # an error event and [DONE]; a partial event is dropped
            return False
        finally:
            await upstream.aclose()

    def _upstream_error(self, err: httpx.TransportError, replica) -> APIError:
        if isinstance(err, httpx.TimeoutException):
            return APIError(504, f"The replica {replica.name} sent nothing for {self.config.request_timeout_s:g} s; "
                                 f"the response is incomplete.", code="timeout")
        return APIError(502, f"The replica {replica.name} failed mid-response ({type(err).__name__}); the response "
                             f"is incomplete.", code="replica_failed")

    # -- routing by model name -------------------------------------------------------------------------
    async def _pool_for(self, model, auth: list) -> str | None:
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

    async def _cards(self, name: str, auth: list | None = None) -> list[dict]:
        """The model cards of one pool, from its first replica that answers (with the client's key, if any)."""
        for replica in self.pools[name].ready():
            try:
                response = await self.client.get(replica.url + "/v1/models", headers=auth, timeout=2.0)
                cards = response.json()["data"]
                ids = {c["id"] for c in cards}
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            self._model_ids[name] = ids
            return cards
        return []


def _note_replica(state: dict, name: str) -> None:
    """The replica that answers, in the access log (labkit.replica) and on the router's span."""
    state["log"]["replica"] = name
    if state["span"] is not None:
        state["span"].set_attribute("labkit.replica", name)
