"""`labkit.bench.sse_client` against small servers on loopback that frame their replies in each way HTTP/1.1
allows: chunked events split anywhere, CRLF line ends, a plain Content-Length error body, a body that runs to
the end of the connection, and replies that break off."""
from __future__ import annotations

import asyncio
import json

import pytest

from labkit.bench.sse_client import StreamError, stream_post

pytestmark = pytest.mark.unit


async def _serving(reply, run):
    """Start a one-shot server that sends `reply` (a list of byte strings, written one by one) after reading a
    request, then closes; run `run(url, seen)` against it, `seen` receiving the request's bytes."""
    seen = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        seen.append(head + await reader.readexactly(length))
        for piece in reply:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await run(f"http://127.0.0.1:{port}/v1/chat/completions", seen)


def _chunked(*pieces: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"] + [
        b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


async def _events(url, seen):
    async with stream_post(url, {"model": "m", "stream": True}, {"Authorization": "Bearer k"}) as response:
        return response.status, [e async for e in response.events()]


def test_events_split_across_chunks_and_crlf_line_ends_come_out_whole():
    stream = _chunked(b'data: {"a": 1}\n\ndata: {"a"', b': 2}\n', b"\n: a comment\n\ndata: [DONE]\r\n\r\n")
    status, events = asyncio.run(_serving(stream, _events))
    assert status == 200 and events == [b'{"a": 1}', b'{"a": 2}', b"[DONE]"]


def test_the_request_is_json_with_its_headers():
    async def run(url, seen):
        await _events(url, seen)
        return seen[0]

    sent = asyncio.run(_serving(_chunked(b"data: [DONE]\n\n"), run))
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and b"Authorization: Bearer k" in head
    assert json.loads(body) == {"model": "m", "stream": True}


def test_an_error_reply_with_a_length_is_read_as_a_body():
    error = b'{"error": {"message": "queue full", "code": 429}}'
    reply = [b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error)]

    async def run(url, seen):
        async with stream_post(url, {}) as response:
            return response.status, await response.json()

    assert asyncio.run(_serving(reply, run)) == (429, json.loads(error))


def test_a_body_without_length_or_chunks_runs_to_the_end_of_the_connection():
    reply = [b"HTTP/1.1 200 OK\r\n\r\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert asyncio.run(_serving(reply, _events)) == (200, [b"1", b"2"])


@pytest.mark.parametrize("reply", [
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10\r\ndata: x"],  # breaks off inside a chunk
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\n"],  # not a chunk size
    [b"not http at all"],
])
def test_a_reply_that_breaks_off_or_is_not_http_raises_stream_error(reply):
    with pytest.raises(StreamError):
        asyncio.run(_serving(reply, _events))


def test_a_refused_connection_and_a_bad_url_raise_stream_error():
    async def refused():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with stream_post(f"http://127.0.0.1:{port}/", {}):
            pass

    with pytest.raises(StreamError, match="cannot connect"):
        asyncio.run(refused())
    with pytest.raises(StreamError, match="not an http"):
        asyncio.run(_events("ftp://example.com/x", []))
