"""The few raw-ASGI helpers the router needs: send a whole response, an OpenAI-shaped error, and an
`Exchange` that remembers what one request has been sent so far, so it can always be ended properly."""
from __future__ import annotations

import json

from ..server.errors import APIError  # the one definition of the error shape, shared with the server

DONE_EVENT = b"data: [DONE]\n\n"


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    return json.dumps(APIError(status, message, code=code, param=param).body()).encode()


async def respond(send, status: int, body: bytes, content_type: bytes = b"application/json", extra=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send, error: APIError, extra=()):
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await respond(send, error.status, json.dumps(error.body()).encode(), extra=[*headers, *extra])


def complete_events(buffer: bytes) -> int:
    """How many leading bytes of `buffer` are whole Server-Sent Events (each ends with a blank line)."""
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class Exchange:
    """One HTTP request through the router, wrapping its ASGI `send`: whether the response has started,
    whether it is an event stream, whether its `[DONE]` went out, whether it has ended. `end_with(error)`
    ends it whatever was sent: a JSON error if nothing was, an error event and `[DONE]` for a stream."""

    __slots__ = ("_send", "task", "started", "ended", "event_stream", "done_sent", "expired")

    def __init__(self, send, task):
        self._send, self.task = send, task
        self.started = self.ended = self.event_stream = self.done_sent = self.expired = False

    async def send(self, message) -> None:
        await self._send(message)  # uvicorn writes synchronously after any wait: past this line it went out
        if message["type"] == "http.response.start":
            self.started = True
            content_type = next((v for k, v in message.get("headers", ()) if k.lower() == b"content-type"), b"")
            self.event_stream = content_type.startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True

    async def send_events(self, events: bytes, more_body: bool = True) -> None:
        """Whole SSE events of a stream (never a partial one, so an error event can always follow)."""
        if events.rstrip().endswith(DONE_EVENT.rstrip()):
            self.done_sent = True
        await self.send({"type": "http.response.body", "body": events, "more_body": more_body})

    async def end_with(self, error: APIError) -> None:
        if self.ended:
            return
        if not self.started:
            await respond_error(self.send, error)
        elif self.event_stream:
            await self.send_events(b"" if self.done_sent else error.sse() + DONE_EVENT, more_body=False)
        else:  # a plain body under way (the router buffers those, so only on a bug): end it
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
