"""Guards in front of the routes: a body-size limit (413), the bearer API key (401), admission (429)."""
from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError, queue_full
from .hardening import BODY_TIMEOUT_S, BodyTimeout, read_body_within


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length, or as soon as a chunked body passes it;
    408 for a body not sent within `timeout_s` (a slow client cannot hold a connection and a worker). The
    body (at most `max_bytes`, which routes would read whole anyway) is read here, then replayed."""

    def __init__(self, app, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        try:
            body = await read_body_within(receive, self.timeout_s, self.max_bytes)
        except BodyTimeout:
            error = APIError(408, f"The request body did not arrive within {self.timeout_s:g} s.", code="body_timeout")
            scope.setdefault("state", {})["labkit_error"] = error.code
            return await error.response()(scope, receive, send)
        if body is None:  # the client left before sending its body
            return
        chunks, size = body
        if size > self.max_bytes:
            return await self._reject(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        error = APIError(413, f"The request body is larger than this server's limit of {self.max_bytes} bytes.",
                         code="body_too_large")
        scope.setdefault("state", {})["labkit_error"] = error.code
        await error.response()(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="The server's API key, when it was started with one.")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for the /v1 routes: 401 unless the bearer token matches the configured key."""
    expected = request.app.state.config.api_key
    if not expected:
        return
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise APIError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class Admission:
    """A bounded waiting queue in front of the engine: admits while fewer than `max_waiting` requests wait
    beyond the running batch, else raises 429 with Retry-After. Every admitted request is released once."""

    def __init__(self, max_running: int, max_waiting: int, retry_after_s: int):
        self.capacity = max_running + max_waiting
        self.max_running = max_running
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.accepting = True

    def admit(self) -> None:
        if not self.accepting:
            raise APIError(503, "The server is shutting down.", code="shutting_down")
        if self.in_flight >= self.capacity:
            raise queue_full(self.retry_after_s)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    @property
    def waiting(self) -> int:
        return max(0, self.in_flight - self.max_running)
