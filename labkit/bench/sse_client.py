"""One streamed POST over HTTP/1.1 on asyncio's own streams, read as server-sent events: the load client of
`labkit bench serve`.

Why not httpx: a load test shares the machine with the server it measures, and every CPU second the client
spends is one the server under test does not get. On the 2-core host, httpx (through httpcore, h11 and
anyio) spent 0.31-0.32 s of CPU reading the 32 streams of `bench serve --workload engine` (2,121 events),
and `labkit serve` then made 578-629 tok/s; reading the same events from the socket directly took 0.07-0.08 s,
and the same server made 662-666 tok/s (its engine alone: 712). One connection per request (`Connection:
close`): on loopback a connect costs far less than the stream it carries, and nothing is pooled or shared.

    async with stream_post(url, body, headers, timeout_s=600) as response:
        if response.status != 200:
            text = await response.text()
        async for data in response.events():   # each event's data, as bytes
            ...
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

HEAD_LIMIT = 1 << 16  # bytes of status line and headers


class StreamError(Exception):
    """The connection failed, or the reply broke HTTP/1.1 framing."""


class Response:
    def __init__(self, reader: asyncio.StreamReader, status: int, headers: dict[str, str]):
        self.status, self.headers = status, headers
        self._reader = reader
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._left = int(headers["content-length"]) if "content-length" in headers and not self._chunked else None

    async def _pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives, unframed."""
        reader = self._reader
        try:
            if self._chunked:
                while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
                    yield (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")  # the end: no trailers are sent by OpenAI-compatible servers
            elif self._left is not None:
                if self._left:
                    yield await reader.readexactly(self._left)
            else:  # neither: the body runs to the end of the connection
                while piece := await reader.read(1 << 16):
                    yield piece
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            raise StreamError(f"the reply broke off or is not HTTP/1.1 framing: {error!r}") from None

    async def text(self) -> str:
        return b"".join([piece async for piece in self._pieces()]).decode(errors="replace")

    async def json(self):
        return json.loads(await self.text())

    async def events(self) -> AsyncIterator[bytes]:
        """The `data:` of each server-sent event, stripped (b"[DONE]" included), until the body ends."""
        pending = b""
        async for piece in self._pieces():
            pending += piece.replace(b"\r\n", b"\n") if b"\r" in piece else piece
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        yield line[5:].strip()


@contextlib.asynccontextmanager
async def stream_post(url: str, body: dict, headers: dict[str, str] | None = None,
                      timeout_s: float = 600.0, connect_timeout_s: float = 10.0) -> AsyncIterator[Response]:
    """POST `body` as JSON to an http:// or https:// `url`; the response, its body still to read. Raises
    StreamError for a failed connection or broken framing, TimeoutError past `timeout_s` in all."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StreamError(f"not an http(s) URL: {url!r}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    payload = json.dumps(body).encode()
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {host}",
             "Content-Type: application/json", "Accept: text/event-stream", f"Content-Length: {len(payload)}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    async with asyncio.timeout(timeout_s):
        try:
            async with asyncio.timeout(connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    parts.hostname, port, ssl=ssl.create_default_context() if secure else None, limit=HEAD_LIMIT)
        except OSError as error:
            raise StreamError(f"cannot connect to {parts.hostname}:{port}: {error.strerror or error!r}") from None
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
            try:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                status = int(head[0].split(" ", 2)[1])
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, ValueError) as error:
                raise StreamError(f"no HTTP/1.1 status line and headers: {error!r}") from None
            headers_in = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers_in[name.strip().lower()] = value.strip()
            yield Response(reader, status, headers_in)
        except OSError as error:
            raise StreamError(f"the connection failed: {error.strerror or error!r}") from None
        finally:
            writer.close()
