"""SERVE from the command line: `labkit serve` and `labkit demo`."""
from __future__ import annotations

import argparse
import sys

from ..config import ServerConfig
from .flags import (add_engine_flags, add_model_flags, add_observability_flags, add_serving_model_flags, add_slo_flags,
                    engine_options, model_from, named, non_negative_float, positive_int, slo_from)


def cmd_serve(args: argparse.Namespace) -> None:
    import dataclasses
    import os

    from ..monitor.logs import configure_logging, log_level
    from ..openmp import restart_tuned

    level = log_level(args.log_level)
    if args.tune:
        restart_tuned()  # tcmalloc preloaded: it only works from process start
    configure_logging(level)
    model, encoder = named(model_from(args)), named(args.encoder)
    if args.served_model_name and model is None:
        raise ValueError("--served-model-name names MODEL's id, and MODEL is none")
    config = ServerConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("LABKIT_API_KEY"),
                          cors_origins=tuple(args.cors_origin), max_waiting=args.max_waiting,
                          request_timeout_s=args.timeout, max_body_bytes=args.max_body_bytes,
                          access_log=args.access_log, embed_max_batch_size=args.embed_max_batch_size,
                          embed_max_queue_delay_ms=args.embed_max_queue_delay_ms,
                          shutdown_grace_s=args.drain_timeout, allowed_hosts=tuple(args.allowed_hosts),
                          slo=slo_from(args), otlp_traces_endpoint=args.otlp_traces_endpoint)
    if args.optimize is not None:  # refused before a long load and conversion, not after
        from ..optimize import OPTIMIZERS, OUTSIDE_ENGINE

        servable = [name for name in OPTIMIZERS if name not in OUTSIDE_ENGINE]
        if args.optimize not in servable:
            raise ValueError(f"--optimize {args.optimize} cannot be served by the engine; choose one of: "
                             f"{', '.join(servable)}.")
    from ..server.runner import listening_socket

    sock = listening_socket(config.host, config.port)  # an address in use fails now, not after the load
    import torch

    from ..models import load_model
    from ..optimize import variant_of
    from ..server import run_server

    # This thread loads the models and then runs the event loop; the engine steps in a thread of its own. Kept
    # at one torch thread, it never forms an OpenMP team, so the process has no more OpenMP threads than
    # cores and libgomp keeps its full spin between ops (labkit/engine/engine.py, _own_threads).
    engine_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models = [load_model(name, device=args.device, dtype=args.dtype, progress=False,
                         trust_remote_code=args.trust_remote_code, optimize=args.optimize if name == model else None)
              for name in (model, encoder) if name is not None]
    for loaded in models:
        print(f"labkit: loaded {loaded.name} ({loaded.kind}, {variant_of(loaded)}, {loaded.weight_mb:.0f} MB of weights) "
              f"on {loaded.device}", file=sys.stderr, flush=True)
    if args.served_model_name:  # the id the API answers to and the metrics' model_name
        models[0] = dataclasses.replace(models[0], name=args.served_model_name)
    options = {**engine_options(args), "enable_prefix_caching": not args.no_prefix_caching,
               "adapt_threads": args.adapt_threads, "cpu_threads": engine_threads, "enforce_eager": args.enforce_eager}
    run_server(models, config, engine_options=options, log_level=level, sock=sock)


def cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import launch_demo

    launch_demo(model=args.model, url=args.url, host=args.host, port=args.port, device=args.device,
                dtype=args.dtype, api_key=args.api_key)


def add_serve_commands(commands) -> None:
    """`labkit serve` and `labkit demo`."""
    serve = commands.add_parser("serve", help="the OpenAI-compatible server (completions, chat, responses; "
                                              "embeddings with --encoder)",
                                description="Serve MODEL (and, with --encoder, an embedding model for "
                                            "/v1/embeddings) over an OpenAI-compatible HTTP API with continuous "
                                            "batching. Ctrl-C or SIGTERM drains: in-flight requests finish or are "
                                            "cancelled cleanly.")
    add_model_flags(serve, positional=True)
    add_serving_model_flags(serve)
    serve.add_argument("--encoder", metavar="NAME", default=None,
                       help="also serve this encoder for /v1/embeddings, e.g. minilm-l6-v2 (default: none)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: "
                                                       "$LABKIT_API_KEY, else no key)")
    serve.add_argument("--optimize", metavar="VARIANT", default=None,
                       help="serve an optimized variant of the LLM, e.g. bf16, torch-int8, bnb-4bit (see `labkit "
                            "bench optimize`; ONNX variants run outside the engine and are refused)")
    add_engine_flags(serve)
    serve.add_argument("--no-tune", dest="tune", action="store_false",
                       help="do not restart with tcmalloc preloaded (default: restart once with it when the system "
                            "has it, as the benchmarks do; see labkit/openmp.py)")
    serve.add_argument("--no-adapt-threads", dest="adapt_threads", action="store_false",
                       help="keep every CPU thread even when another process shares the cores (default: the engine "
                            "halves its threads while it waits for a CPU, see engine/threads.py)")
    serve.add_argument("--no-prefix-caching", action="store_true",
                       help="compute every prompt in full (by default requests sharing a prompt prefix share its "
                            "KV pages, and the shared part is not computed again)")
    serve.add_argument("--enforce-eager", action="store_true",
                       help="on a GPU: run decode steps op by op (by default they replay CUDA graphs captured on "
                            "first use, see engine/cuda_graphs.py); no effect on a CPU")
    serve.add_argument("--max-waiting", type=int, default=64, help="requests queued beyond the running batch "
                                                                   "before 429 (default 64)")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds before a request gets 504 "
                                                                    "(default 120)")
    serve.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="larger bodies get 413 "
                                                                                    "(default 1 MiB)")
    serve.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable; "
                                                                          "default: no CORS)")
    serve.add_argument("--drain-timeout", type=non_negative_float, default=ServerConfig.shutdown_grace_s,
                       metavar="SECONDS", help="on SIGTERM or Ctrl-C, new requests get 503 and in-flight ones this "
                                           f"long to finish; then they end with an error (default "
                                           f"{ServerConfig.shutdown_grace_s:g})")
    serve.add_argument("--allowed-hosts", metavar="NAME", action="append", default=[],
                       help="also answer requests whose Host header names NAME (repeatable; '*' for any). By "
                            "default only loopback names and the bound address are answered, which stops web "
                            "pages from reaching the server through DNS rebinding")
    add_observability_flags(serve, "")
    add_slo_flags(serve)
    serve.add_argument("--embed-max-batch-size", type=positive_int, default=32,
                       help="dynamic batcher: most texts per encoder call (default 32)")
    serve.add_argument("--embed-max-queue-delay-ms", type=float, default=5.0,
                       help="dynamic batcher: how long a text waits for others (default 5 ms)")
    serve.set_defaults(run=cmd_serve)

    demo = commands.add_parser("demo", help="the Gradio chat front-end",
                               description="A chat UI that streams replies with their TTFT and tokens/s and a live "
                                           "throughput plot; in-process engine, or any server given by --url.")
    add_model_flags(demo)
    demo.add_argument("--url", default=None, help="talk to this OpenAI-compatible server instead of loading MODEL")
    demo.add_argument("--api-key", default=None, help="bearer key for --url")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    demo.set_defaults(run=cmd_demo)
