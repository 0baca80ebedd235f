"""Request ids, error counts and the JSON access log: one line per request, written when its response ends.

Each line is one JSON object (ECS-friendly field names under `@timestamp`), so Filebeat's `ndjson`
parser or Logstash's `json` codec ingest it as is:

    {"@timestamp": "2025-01-01T12:00:00.123Z", "request_id": "req-…", "method": "POST",
     "path": "/v1/chat/completions", "status": 200, "model": "smollm2-135m-instruct", "stream": true,
     "prompt_tokens": 31, "completion_tokens": 64, "ttft_ms": 41.2, "latency_ms": 812.5,
     "finish_reason": "length", "client": "127.0.0.1"}

Routes add their fields to `request.state.log` (a dict); this middleware adds the rest.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import IO


class AccessLog:
    """Appends JSON lines to a file (or stdout for "-"), one write per line, safe across threads."""

    def __init__(self, target: str):
        self.target = target
        self._stream: IO[str] = sys.stdout if target == "-" else open(target, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestContextMiddleware:
    """Gives each request an id (`X-Request-Id`, the client's own if it sent one), counts error statuses
    in the metrics, and writes the access-log line after the last byte of the response."""

    def __init__(self, app, access_log: AccessLog | None = None, metrics=None):
        self.app = app
        self.access_log = access_log
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started_wall, started = time.time(), time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or f"req-{uuid.uuid4().hex[:24]}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        fields: dict = {}
        state["log"] = fields
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.metrics is not None and status >= 400:
                self.metrics.record_error(status)
            if self.access_log is not None:
                client = scope.get("client")
                record = {"@timestamp": _timestamp(started_wall), "request_id": request_id,
                          "method": scope["method"], "path": scope["path"], "status": status,
                          "model": None, "prompt_tokens": None, "completion_tokens": None, "ttft_ms": None,
                          "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                          "finish_reason": None, "client": client[0] if client else None}
                if "labkit_error" in state:
                    record["error"] = state["labkit_error"]
                record.update(fields)
                self.access_log.write(record)
