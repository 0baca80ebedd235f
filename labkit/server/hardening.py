"""What a service on loopback needs beyond its routes, shared by the server and the router.

- `HostGuard`: a Host-header allow-list. A web page can point a DNS name it controls at 127.0.0.1 (DNS
  rebinding) and then drive a keyless local server from the user's browser; the browser still sends the
  page's own name as Host, so refusing names that are not ours closes that door.
- `SlowClientGuard` (an h11 protocol for uvicorn): a client must finish its request line and headers
  within `header_timeout_s` of connecting (or of the previous response), else the connection is closed.
  uvicorn alone only times out idle keep-alive connections, so a client that sends one header byte at a
  time (slowloris) holds a connection for as long as it likes. HTTP that cannot be parsed gets a JSON 400.
- `read_body_within`: the body must arrive within `body_timeout_s`.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import APIError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
HEADER_TIMEOUT_S = 10.0  # request line and headers, from connection (or last response) to the blank line
BODY_TIMEOUT_S = 30.0  # the whole body, once the headers are in


def allowed_hosts_for(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The Host names a server bound to `bind_host` answers: loopback names, the bound address itself and
    `extra` ("*" allows any). None (any Host) for a wildcard bind with no `extra`: the server is then meant
    to be reached under names it cannot know, and is exposed to the network anyway."""
    extra = [h.strip().lower() for h in extra if h.strip()]
    if "*" in extra or (bind_host in WILDCARD_ADDRESSES and not extra):
        return None
    names = {*LOOPBACK_NAMES, *extra}
    if bind_host not in WILDCARD_ADDRESSES:
        names.add(bind_host.lower())
    return frozenset(names)


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: 'example.com:8000' → 'example.com', '[::1]:80' → '::1'."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text


class HostGuard:
    """ASGI middleware: 400 for an HTTP request whose Host header names a host not in `allowed` (None: any).
    A request without Host (HTTP/1.0) passes: browsers always send one, so it is not a rebinding vector."""

    def __init__(self, app, allowed: frozenset[str] | None):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if self.allowed is not None and scope["type"] == "http":
            header = next((v for k, v in scope["headers"] if k == b"host"), None)
            if header is not None and not self._allowed(host_name(header)):
                error = APIError(400, f"The Host header names a host this server does not answer for "
                                      f"({', '.join(sorted(self.allowed))}); start it with --allowed-hosts to add "
                                      f"names.", code="host_not_allowed")
                scope.setdefault("state", {})["labkit_error"] = error.code
                return await error.response()(scope, receive, send)
        return await self.app(scope, receive, send)

    def _allowed(self, name: str) -> bool:
        if name in self.allowed:
            return True
        try:  # any loopback address (127.0.0.2, ::ffff:127.0.0.1) is this machine too
            return ipaddress.ip_address(name).is_loopback and "127.0.0.1" in self.allowed
        except ValueError:
            return False


class SlowClientGuard(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on the request line and headers (see the module doc)."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # a keep-alive connection starts its next request
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def send_400_response(self, msg: str) -> None:
        """HTTP that cannot be parsed (a bad byte in a header name or the path) gets OpenAI's error shape too,
        not uvicorn's plain text."""
        body = json.dumps(APIError(400, f"{msg} The request could not be parsed as HTTP/1.1.",
                                   code="invalid_http").body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[SlowClientGuard]:
    """`SlowClientGuard` with its own header deadline, for `uvicorn.Config(http=...)`."""
    return type("SlowClientGuard", (SlowClientGuard,), {"header_timeout_s": header_timeout_s})


class BodyTimeout(Exception):
    """The client did not send its whole body in time."""


async def read_body_within(receive, seconds: float, max_bytes: int | None = None) -> tuple[list[bytes], int] | None:
    """The body's chunks and their total size, read within `seconds` (BodyTimeout otherwise), stopping as
    soon as it passes `max_bytes` (the size then says so). None if the client left first."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if (max_bytes is not None and size > max_bytes) or not message.get("more_body", False):
                    return chunks, size
    except TimeoutError:
        raise BodyTimeout from None
