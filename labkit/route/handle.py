"""Running a router: in the foreground (`labkit up`) or in a background thread with its own event loop
(`labkit.route(...)`, for notebooks), and `StaticPool` for replicas that something else started."""
from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass

import uvicorn

from ..config import RouterConfig
from ..server.hardening import HostGuard, allowed_hosts_for, guarded_protocol
from .router import Router

STOP_MARGIN_S = 10.0  # beyond the drain timeout: ending the last requests, closing connections, the lifespan


@dataclass(eq=False)
class StaticReplica:
    name: str
    url: str


class StaticPool:
    """Fixed replica URLs (servers started elsewhere, e.g. with `labkit.serve`). A replica that fails a
    request is left out for `cooldown_s`, then tried again."""

    def __init__(self, urls: list[str], name: str = "static", cooldown_s: float = 1.0):
        self.replica_list = [StaticReplica(f"{name}-{i}", url.rstrip("/")) for i, url in enumerate(urls)]
        self.name, self.cooldown_s, self.target = name, cooldown_s, len(urls)
        self._down_until: dict[str, float] = {}

    def ready(self) -> tuple[StaticReplica, ...]:
        now = time.monotonic()
        return tuple(r for r in self.replica_list if self._down_until.get(r.name, 0.0) <= now)

    def report_failure(self, replica) -> None:
        self._down_until[replica.name] = time.monotonic() + self.cooldown_s


class RouterServer(uvicorn.Server):
    """uvicorn for a router, hardened and draining. The app is the router behind a Host-header allow-list
    (`allowed_hosts_for(config.host, config.allowed_hosts)`); the protocol closes a connection whose request
    line and headers take over `config.header_timeout_s`. On stop, while still listening, it drains the
    router (new requests 503, in-flight ones `config.drain_timeout_s`, then each ends with an error), and
    only then lets uvicorn close connections: its own graceful timeout is longer, so it never cuts one."""

    def __init__(self, router: Router, config: RouterConfig, log_level: str = "warning"):
        self.router = router
        app = HostGuard(router, allowed_hosts_for(config.host, config.allowed_hosts))
        super().__init__(uvicorn.Config(
            app, host=config.host, port=config.port, log_level=log_level, access_log=False, lifespan="on",
            ws="none", server_header=False, date_header=False, proxy_headers=False,
            http=guarded_protocol(config.header_timeout_s),
            timeout_graceful_shutdown=math.ceil(config.drain_timeout_s) + 5))

    async def shutdown(self, sockets=None) -> None:
        drain = asyncio.ensure_future(self.router.drain())
        while not drain.done():
            if self.force_exit:  # a second Ctrl-C: end what is still running now, with its error
                self.router.end_drain_now()
            await asyncio.wait((drain,), timeout=0.1)
        await super().shutdown(sockets)


def uvicorn_server(router: Router, config: RouterConfig, log_level: str = "warning") -> uvicorn.Server:
    return RouterServer(router, config, log_level)


class RouterHandle:
    """A router running in a background thread: `.url`, `.router` (its state: load, metrics), `.stop()`."""

    def __init__(self, router: Router, config: RouterConfig, startup_timeout: float = 30.0):
        self.router = router
        self._grace = config.drain_timeout_s
        self._server = RouterServer(router, config)
        failure: list[BaseException] = []

        def run():
            try:
                asyncio.run(self._server.serve())
            except BaseException as err:  # reported below
                failure.append(err)

        self._thread = threading.Thread(target=run, name="labkit-router", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                raise OSError(f"the router could not start on {config.host}:{config.port}: "
                              f"{failure[0] if failure else 'not in time'}")
            time.sleep(0.02)
        sock = self._server.servers[0].sockets[0]
        self.host, self.port = config.host, sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop: new requests get 503, in-flight ones have the drain timeout, then end with an
        error; returns once the router has stopped (or after `timeout`, default the drain timeout + 10 s)."""
        self._server.should_exit = True
        self._thread.join(self._grace + STOP_MARGIN_S if timeout is None else timeout)

    def __enter__(self) -> RouterHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RouterHandle({self.url}, policy {self.router.policy.name}, pools {list(self.router.pools)})"


def route(pools, *, policy: str | None = None, port: int = 0, config: RouterConfig | None = None, bus=None,
          seed: int | None = None) -> RouterHandle:
    """Start a router over `pools` (a ReplicaPool, a StaticPool, a list of URLs, or a dict model name → pool)
    in the background; returns once it listens. `policy` and `port` win over `config`'s."""
    from dataclasses import replace

    config = config or RouterConfig()
    config = replace(config, port=port, policy=policy or config.policy)
    if isinstance(pools, (list, tuple)):
        pools = StaticPool(list(pools))
    return RouterHandle(Router(pools, config, bus=bus, seed=seed), config)
