"""Request ids, error counts, the request's trace span and the access log: one line per request, written when
its response ends, in Elastic Common Schema (by `ecs_logging`), so Filebeat's `ndjson` parser ships it as is:

    {"@timestamp":"2025-01-01T12:00:00.123Z","log.level":"info","message":"POST /v1/chat/completions 200",
     "ecs.version":"1.6.0","event":{"dataset":"labkit.access","duration":812500000},
     "http":{"request":{"id":"req-…","method":"POST"},"response":{"status_code":200}},
     "url":{"path":"/v1/chat/completions"},"client":{"ip":"127.0.0.1"},"service":{"name":"labkit-server"},
     "trace":{"id":"0af7651916cd43dd8448eb211c80319c"},"span":{"id":"b7ad6b7169203331"},
     "labkit":{"model":"smollm2-135m-instruct","stream":true,"prompt_tokens":31,"completion_tokens":64,
               "ttft_ms":41.2,"finish_reason":"length"}, "process":{"pid":4242}, ...}

@timestamp is when the request arrived, event.duration (ns) how long it took to the last byte; trace and span
ids are there when tracing is on. Routes (and the router) add their fields to `request.state.log` (a dict):
they come out under `labkit.`.
"""
from __future__ import annotations

import logging
import sys
import time
import uuid

import ecs_logging

from ..monitor.tracing import UNTRACED_PATHS, Tracing

# Where each line was written from, and by which thread, says nothing about the request: left out.
NOT_LOGGED = ("log.origin", "log.original", "log.logger", "process.name", "process.thread")


class AccessLog:
    """ECS lines to a file (appended; several processes may share one) or stdout for "-", one write per
    line, safe across threads. `service` is the ECS service.name of every line."""

    def __init__(self, target: str, service: str = "labkit-server"):
        self.target = target
        self.service = service
        self._handler = (logging.StreamHandler(sys.stdout) if target == "-"
                         else logging.FileHandler(target, mode="a", encoding="utf-8"))
        self._handler.setFormatter(ecs_logging.StdlibFormatter(exclude_fields=NOT_LOGGED))

    def write(self, message: str, started_wall: float, fields: dict) -> None:
        """One line: `message`, @timestamp `started_wall` (epoch seconds), `fields` by their ECS (dotted) names."""
        record = logging.LogRecord("labkit.access", logging.INFO, __file__, 0, message, None, None)
        record.created, record.msecs = started_wall, (started_wall % 1) * 1000
        record.__dict__.update(fields, **{"service.name": self.service, "event.dataset": "labkit.access"})
        self._handler.handle(record)

    def close(self) -> None:
        self._handler.close()


class RequestContextMiddleware:
    """Gives each request an id (`X-Request-Id`, the client's own if it sent one; a router forwards it), counts
    error statuses in the metrics, runs the request inside its trace span when tracing is on, and writes the
    access-log line after the last byte of the response."""

    def __init__(self, app, access_log: AccessLog | None = None, metrics=None, tracing: Tracing | None = None):
        self.app = app
        self.access_log = access_log
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started_wall, started = time.time(), time.perf_counter()
        sent_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")[:128]
        request_id = sent_id or f"req-{uuid.uuid4().hex[:24]}"
        if not sent_id:  # a router passes it on, so the replica logs the same id
            scope["headers"] = [*scope["headers"], (b"x-request-id", request_id.encode("latin-1"))]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        fields: dict = {}
        state["log"] = fields
        span = None
        if self.tracing is not None and scope["path"] not in UNTRACED_PATHS:
            span = self.tracing.start_request(scope)
            token = self.tracing.activate(span)
        state["span"] = span  # routes describe it (traces.py); a router names it as the replica's parent
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                if not any(k.lower() == b"x-request-id" for k, _ in headers):  # a replica's answer has it already
                    message["headers"] = [*headers, (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.metrics is not None and status >= 400:
                self.metrics.record_error(status)
            if span is not None:
                self.tracing.end_request(span, status, token)
            if self.access_log is not None:
                self._log(scope, state, fields, status, started_wall, time.perf_counter() - started, span)

    def _log(self, scope, state, fields, status, started_wall, duration_s, span) -> None:
        method, path, client = scope["method"], scope["path"], scope.get("client")
        record = {"http.request.id": state["request_id"], "http.request.method": method, "url.path": path,
                  "http.response.status_code": status, "event.duration": int(duration_s * 1e9),
                  "client.ip": client[0] if client else None, "error.code": state.get("labkit_error")}
        if span is not None:
            record.update(Tracing.ids(span))
        record.update({f"labkit.{name}": value for name, value in fields.items()})
        self.access_log.write(f"{method} {path} {status}", started_wall, record)
