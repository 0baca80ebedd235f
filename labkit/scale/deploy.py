"""`labkit.up(...)`: a router in front of a replica pool, fixed in size or autoscaled — the whole route
and scale steps in one call (and what `labkit up` runs).

    with labkit.up("smollm2-135m-instruct", replicas=2) as lab:                 # fixed pool
        client = openai.OpenAI(base_url=lab.url + "/v1", api_key="none")
    lab = labkit.up(model, min_replicas=1, max_replicas=3, policy="power_of_two")   # autoscaled
    lab.bus.subscribe(print)        # ReplicaCount and ScaleDecision events as they happen

One drain timeout (`drain_timeout_s`, 30 s by default) holds for the router and for every replica: on
`stop()` the router refuses new requests and gives those in flight that long while the replicas still run;
a replica drained by scale-down gets the same time for its own.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace

from ..config import RouterConfig, ScaleConfig
from ..monitor.events import EventBus
from ..route import RouterHandle
from ..route.router import Router
from .autoscaler import Autoscaler
from .replica import ReplicaPool


class Deployment:
    """A running router + pool (+ autoscaler): `.url`, `.pool`, `.router`, `.autoscaler`, `.bus`, `.stop()`."""

    def __init__(self, pool: ReplicaPool, handle: RouterHandle, autoscaler: Autoscaler | None, bus: EventBus):
        self.pool, self.handle, self.autoscaler, self.bus = pool, handle, autoscaler, bus
        self.router = handle.router

    @property
    def url(self) -> str:
        return self.handle.url

    def snapshot(self) -> dict:
        """What a live plot shows: replicas ready and wanted, requests in flight and waiting (queue depth)."""
        last = self.autoscaler.last if self.autoscaler is not None else None
        return {"t": time.monotonic(), "ready": len(self.pool.ready()), "desired": self.pool.target,
                "in_flight": self.router.in_flight(), "waiting": last.waiting if last else 0.0}

    def stop(self) -> None:
        """Stop the autoscaler (no more resizing), then drain the router while the replicas still run (new
        requests 503, in-flight ones finish within the drain timeout, the rest end with an error), then
        stop every replica (nothing is left in flight on them by then)."""
        if self.autoscaler is not None:
            self.autoscaler.stop()
        self.handle.stop()
        self.pool.stop()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        mode = (f"autoscaled {self.pool.config.min_replicas}-{self.pool.config.max_replicas}"
                if self.autoscaler else "fixed")
        return f"Deployment({self.url}, {len(self.pool.ready())} replicas ready ({mode}), policy {self.router.policy.name})"


def up(model: str | None = "smollm2-135m-instruct", *, replicas: int | None = None, min_replicas: int | None = None,
       max_replicas: int | None = None, policy: str | None = None, port: int = 0, host: str = "127.0.0.1",
       encoder: str | None = None, scale: ScaleConfig | None = None, router: RouterConfig | None = None,
       serve_args: list[str] | tuple[str, ...] = (), bus: EventBus | None = None, seed: int | None = None,
       api_key: str | None = None, drain_timeout_s: float | None = None) -> Deployment:
    """Start `replicas` copies of `model` behind a router (or `min_replicas`..`max_replicas` with an autoscaler)
    and return once the router listens and the first replicas are ready. `serve_args` are extra
    `labkit serve` flags for every replica (for example `["--max-num-seqs", "8"]`).

    `api_key` (default: `router.api_key`, else `$LABKIT_API_KEY`) is asked by the router on `/v1/*` and by
    every replica. `drain_timeout_s` (default: `router.drain_timeout_s` if a router config is given, else
    `scale.drain_timeout_s`) is set on both, so the router and the replicas drain for the same time. The
    router config's `access_log` and `otlp_traces_endpoint` hold for the replicas too: their lines go to the
    same file, their spans to the same collector."""
    autoscaled = min_replicas is not None or max_replicas is not None
    if autoscaled and replicas is not None:
        raise ValueError("give either replicas (a fixed pool) or min_replicas/max_replicas (autoscaled), not both")
    scale = scale or ScaleConfig()
    if autoscaled:
        low = min_replicas if min_replicas is not None else scale.min_replicas
        scale = replace(scale, min_replicas=low, max_replicas=max_replicas if max_replicas is not None else max(low, scale.max_replicas))
    else:
        n = replicas if replicas is not None else 1
        scale = replace(scale, min_replicas=n, max_replicas=n)
    if drain_timeout_s is None:
        drain_timeout_s = router.drain_timeout_s if router is not None else scale.drain_timeout_s
    scale = replace(scale, drain_timeout_s=drain_timeout_s)
    key = api_key or (router.api_key if router is not None else None) or os.environ.get("LABKIT_API_KEY") or None
    router_config = replace(router or RouterConfig(), host=host, port=port, api_key=key,
                            drain_timeout_s=drain_timeout_s,
                            policy=policy or (router.policy if router else RouterConfig.policy))
    for flag, value in (("--access-log", router_config.access_log),
                        ("--otlp-traces-endpoint", router_config.otlp_traces_endpoint)):
        if value is not None:
            serve_args = [*serve_args, flag, value]
    bus = bus or EventBus()
    pool = ReplicaPool(model, scale.min_replicas, encoder=encoder, config=scale, serve_args=serve_args, bus=bus,
                       host=host, api_key=key)
    try:
        pool.start()
        handle = RouterHandle(Router(pool, router_config, bus=bus, seed=seed), router_config)
    except BaseException:
        pool.stop()
        raise
    autoscaler = Autoscaler(pool, handle.router, scale, bus=bus).start() if autoscaled else None
    return Deployment(pool, handle, autoscaler, bus)
