"""Helpers for tests that run real servers on loopback: a plain ASGI app in a background uvicorn, and waiting
for a condition with a deadline."""
from __future__ import annotations

import contextlib
import threading
import time

import uvicorn


@contextlib.contextmanager
def background_asgi(app, log_level: str = "critical"):
    """Serve `app` on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    """True once `predicate()` is, False if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def metric(text: str, series: str) -> float:
    """A metric of a Prometheus exposition, `name` or `name{label="value",...}`, summed over the label sets
    that match (0 when absent)."""
    from labkit.monitor import scrape

    name, _, labels = series.partition("{")
    wanted = set(scrape.parse(f"x{{{labels.rstrip('}')}}} 0")["x"].popitem()[0]) if labels else set()
    return sum(v for pairs, v in scrape.parse(text).get(name, {}).items() if wanted <= set(pairs))


async def read_body(receive) -> bytes:
    """The whole body of an ASGI request (for the stand-in upstreams the tests serve)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
