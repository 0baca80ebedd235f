"""The few raw-ASGI helpers the router needs: read a body, send a whole response, an OpenAI-shaped error."""
from __future__ import annotations

import json


_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
          504: "timeout_error"}


def error_body(status: int, message: str, code: str) -> bytes:
    kind = _TYPES.get(status, "server_error")
    return json.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}}).encode()


class BodyTooLarge(Exception):
    pass


async def read_body(receive, max_bytes: int | None = None) -> bytes | None:
    """The whole request body; None if the client left first; BodyTooLarge past `max_bytes`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if max_bytes is not None and size > max_bytes:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send, status: int, body: bytes, content_type: bytes = b"application/json", extra=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})
