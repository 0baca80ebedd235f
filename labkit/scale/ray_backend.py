"""Beyond one machine: the same replica app as a Ray Serve deployment (`labkit up --backend ray`).

Each Ray Serve replica builds the very app `labkit serve` runs (`labkit.server.app.create_app`), so the
OpenAI API, errors and `/metrics` are the same; Ray Serve's own proxy, router and autoscaler replace
labkit's, configured from the same `ScaleConfig` and `RouterConfig`. `ray[serve]` is the optional `ray`
extra (`pip install -e ".[ray]"`); nothing here imports ray until a deployment starts.

| labkit (ScaleConfig / RouterConfig)   | Ray Serve                                              |
|---------------------------------------|--------------------------------------------------------|
| min_replicas, max_replicas            | autoscaling_config.min_replicas / max_replicas (initial_replicas = min) |
| target_ongoing_requests               | autoscaling_config.target_ongoing_requests             |
| upscale_delay_s, downscale_delay_s    | autoscaling_config.upscale_delay_s / downscale_delay_s |
| interval_s                            | autoscaling_config.metrics_interval_s; look_back_period_s = 4 x interval_s (at least 1 s) |
| max_outstanding_per_replica (router)  | max_ongoing_requests (Ray queues beyond it instead of answering 429) |
| threads_per_replica                   | ray_actor_options.num_cpus, and OMP_NUM_THREADS in the replica's runtime_env |
| max_queue_per_replica, latency_slo_p99_s, policy | no equivalent: Ray scales on ongoing requests and routes by power of two choices |
"""
from __future__ import annotations

import os
import time

from ..config import RouterConfig, ScaleConfig


def ray_autoscaling_config(scale: ScaleConfig) -> dict:
    """labkit's ScaleConfig as Ray Serve's `autoscaling_config`."""
    return {"min_replicas": scale.min_replicas, "initial_replicas": scale.min_replicas,
            "max_replicas": scale.max_replicas, "target_ongoing_requests": scale.target_ongoing_requests,
            "upscale_delay_s": scale.upscale_delay_s, "downscale_delay_s": scale.downscale_delay_s,
            "metrics_interval_s": scale.interval_s, "look_back_period_s": max(1.0, 4 * scale.interval_s)}


def ray_deployment_options(scale: ScaleConfig, router: RouterConfig) -> dict:
    """Every `serve.deployment(...)` option labkit sets: autoscaling, per-replica limit, CPUs and threads."""
    threads = scale.threads_per_replica or max(1, (os.cpu_count() or 1) // max(1, scale.max_replicas))
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
    return {"autoscaling_config": ray_autoscaling_config(scale),
            "max_ongoing_requests": router.max_outstanding_per_replica,
            "ray_actor_options": {"num_cpus": threads, "runtime_env": {"env_vars": env}}}


def replica_app_builder(model: str, *, device: str = "auto", dtype: str = "auto", engine_options: dict | None = None):
    """The builder Ray Serve calls inside each replica: load the model there and build labkit's server app."""
    def build():
        from ..config import ServerConfig
        from ..models import load_model
        from ..server.app import create_app

        return create_app([load_model(model, device=device, dtype=dtype, progress=False)], ServerConfig(),
                          engine_options=engine_options or {})
    return build


class RayDeployment:
    """A labkit app running on Ray Serve: `.url`, `.replicas()` (running now), `.stop()`."""

    def __init__(self, url: str, started_ray: bool):
        self.url, self._started_ray = url, started_ray

    def replicas(self) -> int:
        from ray import serve

        return serve.status().applications["labkit"].deployments["labkit"].replica_states.get("RUNNING", 0)

    def stop(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> RayDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def up_on_ray(model: str = "smollm2-135m-instruct", *, scale: ScaleConfig | None = None,
              router: RouterConfig | None = None, device: str = "auto", dtype: str = "auto",
              engine_options: dict | None = None, address: str | None = None,
              ready_timeout_s: float = 300.0) -> RayDeployment:
    """Deploy `model` on Ray Serve (a new local Ray instance on loopback, or the cluster at `address`, by
    default Ray's own `RAY_ADDRESS`) and return once the first replica answers /ready. ImportError names the
    extra when ray is missing."""
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise ImportError("the Ray backend needs ray[serve]: pip install -e '.[ray]'") from err
    import httpx

    scale, router = scale or ScaleConfig(), router or RouterConfig()
    started_ray = not ray.is_initialized()
    address = address or os.environ.get("RAY_ADDRESS")
    if started_ray:  # "local": not a cluster `ray start` left on this machine, which ray.init would join
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    # One proxy, on the head: the one URL returned (a proxy on every node would also clash on one port when
    # several nodes share a machine)
    serve.start(proxy_location="HeadOnly", http_options={"host": router.host, "port": router.port or 8000})
    replica = serve.deployment(serve.ingress(replica_app_builder(model, device=device, dtype=dtype,
                                                                 engine_options=engine_options))(),
                               name="labkit", **ray_deployment_options(scale, router))
    serve.run(replica.bind(), name="labkit", route_prefix="/", blocking=False)
    url = f"http://{router.host}:{router.port or 8000}"
    deadline = time.monotonic() + ready_timeout_s
    while True:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return RayDeployment(url, started_ray)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            RayDeployment(url, started_ray).stop()
            raise OSError(f"the Ray Serve deployment was not ready after {ready_timeout_s:.0f} s")
        time.sleep(0.5)
