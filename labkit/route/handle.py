"""Running a router: in the foreground (`labkit up`) or in a background thread with its own event loop
(`labkit.route(...)`, for notebooks), and `StaticPool` for replicas that something else started."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import uvicorn

from ..config import RouterConfig
from .router import Router


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


def uvicorn_server(router: Router, config: RouterConfig, log_level: str = "warning") -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(router, host=config.host, port=config.port, log_level=log_level,
                                         access_log=False, lifespan="on", ws="none", server_header=False,
                                         date_header=False, proxy_headers=False, timeout_graceful_shutdown=10))


class RouterHandle:
    """A router running in a background thread: `.url`, `.router` (its state: load, metrics), `.stop()`."""

    def __init__(self, router: Router, config: RouterConfig, startup_timeout: float = 30.0):
        self.router = router
        self._server = uvicorn_server(router, config)
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

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

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
