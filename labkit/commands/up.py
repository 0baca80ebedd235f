"""ROUTE and SCALE from the command line: `labkit up`, a router in front of replicas (+ the autoscaler)."""
from __future__ import annotations

import argparse
import sys

from ..config import RouterConfig, ScaleConfig
from .flags import (add_engine_flags, add_model_flags, add_observability_flags, add_serving_model_flags, add_slo_flags,
                    engine_flags, engine_options, model_from, named, non_negative_float, positive_int, slo_flags)


def replica_flags(args: argparse.Namespace, level: str) -> list[str]:
    """The `labkit serve` flags each replica gets from `labkit up`'s own."""
    flags = ["--device", args.device, "--dtype", args.dtype, *engine_flags(args), "--log-level", level,
             *slo_flags(args)]
    for flag, value in (("--access-log", args.access_log), ("--otlp-traces-endpoint", args.otlp_traces_endpoint),
                        ("--served-model-name", args.served_model_name)):
        if value is not None:  # the replicas' lines share the file, their spans the trace
            flags += [flag, value]
    return flags + (["--trust-remote-code"] if args.trust_remote_code else [])


def cmd_up(args: argparse.Namespace) -> None:
    import importlib.util
    import os
    import signal
    import threading

    from ..models import ALIASES
    from ..models.sources import locate
    from ..monitor.events import ScaleDecision
    from ..monitor.logs import configure_logging, log_level
    from ..route import POLICIES
    from ..scale import up
    from ..server.runner import listening_socket

    model = model_from(args)
    encoder = named(args.encoder)
    for name in (model, encoder):  # an unknown model: one line now, not after three replicas failed to start
        if name is not None and name not in ALIASES:
            locate(name)
    autoscaled = args.min_replicas is not None or args.max_replicas is not None
    if autoscaled and args.replicas is not None:
        raise ValueError("give either --replicas N (a fixed pool) or --min-replicas/--max-replicas (autoscaled)")
    if args.policy not in POLICIES:
        raise ValueError(f"unknown policy {args.policy!r}; choose one of: {', '.join(POLICIES)}")
    low = args.min_replicas if args.min_replicas is not None else 1
    scale = ScaleConfig(min_replicas=args.replicas or low,
                        max_replicas=args.replicas or (args.max_replicas if args.max_replicas is not None else max(low, 4)),
                        target_ongoing_requests=args.target_ongoing_requests, upscale_delay_s=args.upscale_delay,
                        downscale_delay_s=args.downscale_delay, latency_slo_p99_s=args.slo_p99,
                        threads_per_replica=args.threads_per_replica, drain_timeout_s=args.drain_timeout)
    router = RouterConfig(host=args.host, port=args.port, policy=args.policy,
                          max_outstanding_per_replica=args.max_outstanding,
                          api_key=args.api_key or os.environ.get("LABKIT_API_KEY") or None,
                          allowed_hosts=tuple(args.allowed_hosts), drain_timeout_s=args.drain_timeout,
                          access_log=args.access_log, otlp_traces_endpoint=args.otlp_traces_endpoint)
    level = log_level(args.log_level)
    if args.backend == "ray":
        local_only = [flag for flag, given in (("--access-log", args.access_log),
                                               ("--otlp-traces-endpoint", args.otlp_traces_endpoint),
                                               ("--served-model-name", args.served_model_name),
                                               ("--trust-remote-code", args.trust_remote_code)) if given]
        if local_only:
            raise ValueError(f"{' and '.join(local_only)} need --backend local")
        if importlib.util.find_spec("ray") is None:  # asked for an extra that is not installed: the user's to fix
            raise ValueError("--backend ray needs ray[serve], the optional 'ray' extra: pip install -e '.[ray]'")
    if args.port:  # an address in use fails now, not once the replicas are up
        listening_socket(args.host, args.port).close()
    configure_logging(level)
    stop = threading.Event()
    hangup = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()  # the terminal closed: drain all the same
    for sig in (signal.SIGTERM, signal.SIGINT, *hangup):
        signal.signal(sig, lambda *_: stop.set())
    print(f"labkit: starting {scale.min_replicas} replica(s) of {model} ...", file=sys.stderr, flush=True)
    if args.backend == "ray":  # the same replica app, on Ray Serve's router and autoscaler
        from ..scale.ray_backend import up_on_ray

        lab = up_on_ray(model, scale=scale, router=router, device=args.device, dtype=args.dtype,
                        engine_options=engine_options(args) or None)
        for sig in (signal.SIGTERM, signal.SIGINT):  # ray.init installs its own handlers: ours again
            signal.signal(sig, lambda *_: stop.set())
        print(f"labkit: Ray Serve runs {model} on {lab.url} ({scale.min_replicas}-{scale.max_replicas} "
              f"replicas; Ctrl-C to stop)", flush=True)
        try:
            stop.wait()
        finally:
            lab.stop()
        print("labkit: Ray Serve deployment stopped", flush=True)
        return
    lab = up(model, encoder=encoder, scale=scale, router=router, port=args.port, host=args.host, policy=args.policy,
             serve_args=replica_flags(args, level), api_key=router.api_key, drain_timeout_s=args.drain_timeout,
             **({"min_replicas": scale.min_replicas, "max_replicas": scale.max_replicas} if autoscaled
                else {"replicas": scale.min_replicas}))
    mode = (f"autoscaling {scale.min_replicas}-{scale.max_replicas} at {scale.target_ongoing_requests:g} in flight "
            f"per replica" if autoscaled else "fixed pool")
    ready = lab.pool.ready()
    print(f"labkit: routing to {len(ready)} replica(s) of {model} on {lab.url} (policy {args.policy}, "
          f"{mode}; /metrics has labkit:replicas; Ctrl-C to stop)", flush=True)
    for replica in ready:
        print(f"labkit: replica {replica.name} on {replica.url} (pid {replica.pid}, {replica.threads} thread(s), "
              f"log {replica.log_path})", flush=True)
    if autoscaled:
        lab.bus.subscribe(lambda e: print(f"labkit: scale {e.current} -> {e.desired} ({e.reason})", flush=True),
                          ScaleDecision)
    try:
        stop.wait()
        print(f"labkit: draining: new requests get 503, in-flight ones have {args.drain_timeout:g} s", flush=True)
    finally:
        lab.stop()
    print("labkit: router and replicas stopped", flush=True)


def add_up_command(commands) -> None:
    """`labkit up`: router + replicas (+ autoscaler)."""
    up = commands.add_parser("up", help="router + replicas: a fixed pool (--replicas) or autoscaled (--min/--max)",
                             description="Start replicas of MODEL (each a `labkit serve` process with its share of "
                                         "the cores) behind an OpenAI-compatible router, and print their URLs. "
                                         "--replicas N keeps N; --min-replicas A --max-replicas B lets the "
                                         "autoscaler follow the load. Ctrl-C or SIGTERM drains and stops everything: "
                                         "new requests get 503, in-flight ones have --drain-timeout to finish, then "
                                         "end with an error.")
    add_model_flags(up, positional=True)
    add_serving_model_flags(up)
    up.add_argument("--encoder", metavar="NAME", default=None, help="encoder each replica also serves for "
                                                                    "/v1/embeddings (default: none)")
    up.add_argument("--replicas", type=positive_int, default=None, help="a fixed pool of N replicas (default 1)")
    up.add_argument("--min-replicas", type=positive_int, default=None, help="autoscale: fewest replicas")
    up.add_argument("--max-replicas", type=positive_int, default=None, help="autoscale: most replicas")
    up.add_argument("--policy", default=RouterConfig.policy, help="routing policy: round_robin, least_outstanding, "
                                                                  f"power_of_two, prefix_affinity (default "
                                                                  f"{RouterConfig.policy})")
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="router port (default 8000; 0 picks a free one)")
    up.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 at the router and "
                                                    "every replica (default: $LABKIT_API_KEY, else no key)")
    up.add_argument("--allowed-hosts", metavar="NAME", action="append", default=[],
                    help="the router also answers requests whose Host header names NAME (repeatable; '*' for any). "
                         "By default only loopback names and the bound address: no DNS rebinding")
    up.add_argument("--drain-timeout", type=non_negative_float, default=RouterConfig.drain_timeout_s,
                    metavar="SECONDS", help="on Ctrl-C, SIGTERM or scale-down, in-flight requests get this long to "
                                            "finish, at the router and at each replica; then each ends with an error "
                                            f"(default {RouterConfig.drain_timeout_s:g})")
    up.add_argument("--max-outstanding", type=positive_int, default=RouterConfig.max_outstanding_per_replica,
                    help=f"in-flight requests per replica before 429 (default {RouterConfig.max_outstanding_per_replica})")
    up.add_argument("--target-ongoing-requests", type=float, default=ScaleConfig.target_ongoing_requests,
                    help=f"autoscale: in-flight requests per replica to aim for (default "
                         f"{ScaleConfig.target_ongoing_requests:g})")
    up.add_argument("--upscale-delay", type=non_negative_float, default=ScaleConfig.upscale_delay_s,
                    help=f"autoscale: seconds of sustained demand before adding (default {ScaleConfig.upscale_delay_s:g})")
    up.add_argument("--downscale-delay", type=non_negative_float, default=ScaleConfig.downscale_delay_s,
                    help=f"autoscale: seconds of low demand before removing (default {ScaleConfig.downscale_delay_s:g})")
    up.add_argument("--slo-p99", type=float, default=None, help="autoscale: p99 latency SLO in seconds (optional)")
    add_slo_flags(up)
    up.add_argument("--threads-per-replica", type=positive_int, default=None,
                    help="torch threads per replica (default: the cores split evenly)")
    add_engine_flags(up, " (each replica's)")
    add_observability_flags(up, " (the router's and the replicas')")
    up.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local: replica processes on this machine (default); ray: the same replicas as a Ray Serve "
                         "deployment, on a local Ray instance or a cluster (needs the 'ray' extra)")
    up.set_defaults(run=cmd_up)
