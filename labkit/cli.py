"""The `labkit` command. Each subcommand parses its flags and calls the public API; errors a user can
cause come out as one line on stderr with exit status 2, never as a traceback."""
from __future__ import annotations

import argparse
import sys
import time
from importlib import metadata

from .models import ALIASES, DEFAULT_LLM, ModelNotFoundError

DESCRIPTION = """labkit: an interactive inference lab. The flow is load → serve → route → scale → monitor.
Models load offline: see `labkit models` for the built-in aliases; any Hugging Face id or local
directory also works when it is cached or reachable."""


def cmd_models(args: argparse.Namespace) -> None:
    from .models import is_ready, package_dir, resolve_alias

    if args.prepare:
        for alias in ALIASES.values():
            resolve_alias(alias)

    rows = [("alias", "kind", "source (package, license)", "offline")]
    for alias in ALIASES.values():
        try:
            package_dir(alias)
            state = "ready" if is_ready(alias) else "ready (converts once on first load, ~15 s)"
        except ModelNotFoundError:
            state = "missing: run `make lab`"
        rows.append((alias.name, alias.kind, f"{alias.package} ({alias.license})", state))
    _print_table(rows)
    print("\nAny Hugging Face id or local directory also loads when it is cached or reachable.")


def cmd_generate(args: argparse.Namespace) -> None:
    from .generate import stream_generate
    from .models import load_model

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    first_token_at = None
    count = 0
    for piece, count in stream_generate(loaded, args.prompt, max_tokens=args.max_tokens,
                                        temperature=args.temperature, chat=args.chat, seed=args.seed):
        first_token_at = first_token_at or time.perf_counter()
        sys.stdout.write(piece)
        sys.stdout.flush()
    elapsed = time.perf_counter() - started
    sys.stdout.write("\n")
    if count:
        ttft = (first_token_at - started) * 1000
        print(f"[{count} tokens in {elapsed:.2f} s: {count / elapsed:.1f} tok/s, first token after {ttft:.0f} ms; "
              f"{loaded.name} {loaded.summary()['dtype']} on {loaded.device}]", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> None:
    import platform

    import torch

    from .monitor import cpu_reading, gpu_readings

    print("versions")
    print(f"  python        {platform.python_version()}")
    for package in ("labkit", "torch", "transformers", "onnxruntime", "onnxruntime-gpu", "bitsandbytes", "gradio"):
        try:
            print(f"  {package:<13} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    print(f"  torch threads {torch.get_num_threads()}")
    gpus = gpu_readings()
    if gpus:
        print("GPUs (NVML)")
        for gpu in gpus:
            print(f"  [{gpu.index}] {gpu.name}: {gpu.memory_used_bytes / 2**30:.1f} / "
                  f"{gpu.memory_total_bytes / 2**30:.1f} GiB used, utilisation {gpu.utilization_perc:.0%}")
    else:
        print("GPUs          none (NVML not available: CUDA paths are off, CPU is used)")
    cpu = cpu_reading()
    print("CPU")
    print(f"  model         {cpu.model}")
    print(f"  cores         {cpu.physical_cores} physical, {cpu.logical_cores} logical")
    print(f"  memory        {cpu.memory_total_bytes / 2**30:.1f} GiB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"labkit {metadata.version('labkit')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser("models", help="list model aliases, where each comes from, whether it is ready offline",
                                 description="List the built-in model aliases, their source package and license, "
                                             "and whether each is ready to load offline.")
    models.add_argument("--prepare", action="store_true",
                        help="convert every alias that needs it into the cache now (make lab does this)")
    models.set_defaults(run=cmd_models)

    generate = commands.add_parser("generate", help="stream a completion for PROMPT to stdout",
                                   description="Generate text for PROMPT, streaming tokens to stdout as they are "
                                               "produced; timing goes to stderr.")
    generate.add_argument("prompt", metavar="PROMPT", help="the text to continue (or the user message with --chat)")
    add_model_flags(generate)
    generate.add_argument("--max-tokens", type=positive_int, default=128, help="most tokens to generate (default 128)")
    generate.add_argument("--temperature", type=non_negative_float, default=0.7,
                          help="sampling temperature; 0 is greedy and deterministic (default 0.7)")
    generate.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    generate.add_argument("--chat", action="store_true", help="wrap PROMPT as a user message in the model's chat template")
    generate.set_defaults(run=cmd_generate)

    info = commands.add_parser("info", help="devices (NVML when present, else CPU) and versions",
                               description="Show library versions, GPUs through NVML when present, else the CPU.")
    info.set_defaults(run=cmd_info)
    bench = commands.add_parser("bench", help="benchmarks: engine, serve, optimize, monitor",
                                description="Benchmarks; see each subcommand.")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    add_serve_commands(commands, bench_commands)
    add_up_command(commands)
    add_optimize_commands(bench_commands)
    from .bench.engine_bench import add_engine_bench_command

    add_engine_bench_command(bench_commands)
    add_monitor_commands(commands, bench_commands)
    return parser


def cmd_monitor(args: argparse.Namespace) -> None:
    from .monitor import RemoteSource
    from .monitor.console import format_snapshot

    source = RemoteSource(args.url, window_s=args.window)
    live = sys.stdout.isatty() and not args.count
    shown = 0
    try:
        source.read()  # the first scrape: fails here (one line, exit 2) if the server cannot be reached
        while True:
            time.sleep(args.interval)
            try:
                text = format_snapshot(source.read())
            except OSError as err:  # it was there a moment ago: say so and keep watching
                text = f"labkit monitor: {err} (retrying)"
            print(("\033[H\033[2J" if live else "") + text + ("" if live else "\n"), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                return
    finally:
        source.close()


def add_monitor_commands(commands, bench_commands) -> None:
    """`labkit monitor` and `labkit bench monitor`."""
    from .bench.monitor_bench import add_monitor_bench_command

    monitor = commands.add_parser("monitor", help="a live terminal summary of a server's /metrics",
                                  description="Scrape the /metrics of a labkit server or router, or of a vLLM "
                                              "server (the header names the engine), every INTERVAL "
                                              "seconds and print latency (mean, p50, p95, p99 of end-to-end, "
                                              "TTFT, inter-token and queue time), throughput, queue, KV cache "
                                              "and memory over the last WINDOW seconds. Ctrl-C stops.")
    monitor.add_argument("--url", action="append", required=True,
                         help="the server's base URL, e.g. http://127.0.0.1:8000 (repeat for replicas: added up)")
    monitor.add_argument("--interval", type=positive_float, default=1.0, help="seconds between refreshes "
                                                                              "(default 1)")
    monitor.add_argument("--window", type=positive_float, default=30.0, help="seconds the statistics cover "
                                                                            "(default 30)")
    monitor.add_argument("--count", type=positive_int, default=None, help="stop after this many refreshes "
                                                                          "(default: until Ctrl-C)")
    monitor.set_defaults(run=cmd_monitor)
    add_monitor_bench_command(bench_commands)


def add_slo_arguments(parser: argparse.ArgumentParser) -> None:
    """Goodput's service-level objectives, the same flags on serve, up and bench serve (labkit/monitor/slo.py)."""
    parser.add_argument("--slo-ttft-ms", type=positive_float, default=None, metavar="MS",
                        help="goodput SLO on time to first token")
    parser.add_argument("--slo-itl-ms", type=positive_float, default=None, metavar="MS",
                        help="goodput SLO on each request's mean inter-token latency")
    parser.add_argument("--slo-e2e-ms", type=positive_float, default=None, metavar="MS",
                        help="goodput SLO on end-to-end latency")


def slo_from(args: argparse.Namespace):
    from .monitor.slo import SLO

    return SLO(ttft_ms=args.slo_ttft_ms, itl_ms=args.slo_itl_ms, e2e_ms=args.slo_e2e_ms)


def add_observability_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    """The access log, traces and log level: the same flags on serve and up."""
    from .monitor.logs import ENV, LEVELS

    parser.add_argument("--access-log", metavar="PATH", default=None,
                        help=f"append one ECS JSON line per request{whose} to PATH ('-' for stdout)")
    parser.add_argument("--otlp-traces-endpoint", metavar="URL", default=None,
                        help=f"send a trace span per request{whose} to this OTLP/HTTP collector, e.g. "
                             "http://127.0.0.1:4318/v1/traces (default: no tracing)")
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS, default=None,
                        help=f"labkit's own logs (ECS JSON on stderr) from this level up (default: ${ENV}, else info)")


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from .monitor.logs import configure_logging, log_level
    from .openmp import restart_tuned

    level = log_level(args.log_level)
    if args.tune:
        restart_tuned()  # tcmalloc preloaded: it only works from process start
    configure_logging(level)
    from .config import ServerConfig
    from .models import load_model
    from .server import run_server

    config = ServerConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("LABKIT_API_KEY"),
                          cors_origins=tuple(args.cors_origin), max_waiting=args.max_waiting,
                          request_timeout_s=args.timeout, max_body_bytes=args.max_body_bytes,
                          access_log=args.access_log, embed_max_batch_size=args.embed_max_batch_size,
                          embed_max_queue_delay_ms=args.embed_max_queue_delay_ms,
                          shutdown_grace_s=args.drain_timeout, allowed_hosts=tuple(args.allowed_hosts),
                          slo=slo_from(args), otlp_traces_endpoint=args.otlp_traces_endpoint)
    if args.optimize is not None:  # refuse before a long load and conversion, not after
        from .optimize import OPTIMIZERS, OUTSIDE_ENGINE

        servable = [name for name in OPTIMIZERS if name not in OUTSIDE_ENGINE]
        if args.optimize not in servable:
            raise ValueError(f"--optimize {args.optimize} cannot be served by the engine; choose one of: "
                             f"{', '.join(servable)}.")
    names = [n for n in (args.model, args.encoder) if n and n.lower() != "none"]
    import torch

    # This thread loads the models and then runs the event loop; the engine steps in a thread of its own. Kept
    # at one torch thread, it never forms an OpenMP team, so the process has no more OpenMP threads than
    # cores and libgomp keeps its full spin between ops (labkit/engine/engine.py, _own_threads).
    engine_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models = [load_model(n, device=args.device, dtype=args.dtype, progress=False,
                         optimize=args.optimize if n == args.model else None) for n in names]
    from .optimize import variant_of

    for loaded in models:
        print(f"labkit: loaded {loaded.name} ({loaded.kind}, {variant_of(loaded)}, {loaded.weight_mb:.0f} MB of weights) "
              f"on {loaded.device}", file=sys.stderr, flush=True)
    engine_options = {"max_num_seqs": args.max_num_seqs} if args.max_num_seqs else {}
    if args.no_prefix_caching:
        engine_options["enable_prefix_caching"] = False
    if not args.adapt_threads:
        engine_options["adapt_threads"] = False
    engine_options["cpu_threads"] = engine_threads
    run_server(models, config, engine_options=engine_options, log_level=level)


def cmd_bench_serve(args: argparse.Namespace) -> None:
    import json

    from .bench.serve_bench import SLO, Workload, bench_serve, format_report, merge_reports, response_format

    structured = None if args.response_format is None else response_format(args.response_format)  # ValueError: exit 2
    workload = Workload(requests=args.requests, concurrency=args.concurrency, min_tokens=args.min_tokens,
                        max_tokens=args.max_tokens, seed=args.seed, temperature=args.temperature,
                        response_format=structured)
    slo = SLO(ttft_ms=args.slo_ttft_ms, itl_ms=args.slo_itl_ms, e2e_ms=args.slo_e2e_ms)
    report = bench_serve(args.url, workload, model=args.model, api_key=args.api_key, slo=slo, name=args.name,
                         warmup=args.warmup)
    print(format_report(report))
    if args.json:
        import os

        if os.path.exists(args.json):  # same workload, another server: one file compares them
            with open(args.json) as existing:
                report = merge_reports(json.load(existing), report)
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
        print(f"labkit: wrote {args.json}", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import launch_demo

    launch_demo(model=args.model, url=args.url, host=args.host, port=args.port, device=args.device,
                dtype=args.dtype, api_key=args.api_key)


def add_serve_commands(commands, bench_commands) -> None:
    """`labkit serve`, `labkit bench serve` and `labkit demo`."""
    from .config import ServerConfig

    serve = commands.add_parser("serve", help="the OpenAI-compatible server (completions, chat, embeddings)",
                                description="Serve an LLM (and an encoder for /v1/embeddings) over an OpenAI-"
                                            "compatible HTTP API with continuous batching. Ctrl-C or SIGTERM "
                                            "drains: in-flight requests finish or are cancelled cleanly.")
    add_model_flags(serve)
    serve.add_argument("--encoder", default="minilm-l6-v2", help="encoder for /v1/embeddings, or 'none' "
                                                                  "(default minilm-l6-v2)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: "
                                                       "$LABKIT_API_KEY, else no key)")
    serve.add_argument("--optimize", metavar="VARIANT", default=None,
                       help="serve an optimized variant of the LLM, e.g. bf16, torch-int8, bnb-4bit (see `labkit "
                            "bench optimize`; ONNX variants run outside the engine and are refused)")
    serve.add_argument("--max-num-seqs", type=positive_int, default=None, help="most requests in the running batch")
    serve.add_argument("--no-tune", dest="tune", action="store_false",
                       help="do not restart with tcmalloc preloaded (default: restart once with it when the system "
                            "has it, as the benchmarks do; see labkit/openmp.py)")
    serve.add_argument("--no-adapt-threads", dest="adapt_threads", action="store_false",
                       help="keep every CPU thread even when another process shares the cores (default: the engine "
                            "halves its threads while it waits for a CPU, see engine/threads.py)")
    serve.add_argument("--no-prefix-caching", action="store_true",
                       help="compute every prompt in full (by default requests sharing a prompt prefix share its "
                            "KV pages, and the shared part is not computed again)")
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
    add_observability_arguments(serve, "")
    add_slo_arguments(serve)
    serve.add_argument("--embed-max-batch-size", type=positive_int, default=32,
                       help="dynamic batcher: most texts per encoder call (default 32)")
    serve.add_argument("--embed-max-queue-delay-ms", type=float, default=5.0,
                       help="dynamic batcher: how long a text waits for others (default 5 ms)")
    serve.set_defaults(run=cmd_serve)

    load = bench_commands.add_parser("serve", help="load test of any OpenAI-compatible server",
                                     description="Stream N chat requests at most C at a time; report throughput, "
                                                 "TTFT, inter-token and end-to-end latency (mean, p50, p99), "
                                                 "errors and goodput under the SLO flags.")
    load.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000")
    load.add_argument("--concurrency", type=positive_int, default=32, help="requests in flight (default 32)")
    load.add_argument("--requests", type=positive_int, default=64, help="requests in all (default 64)")
    load.add_argument("--min-tokens", type=positive_int, default=16, help="shortest max_tokens asked (default 16)")
    load.add_argument("--max-tokens", type=positive_int, default=128, help="longest max_tokens asked (default 128)")
    load.add_argument("--temperature", type=non_negative_float, default=0.0, help="default 0 (greedy)")
    load.add_argument("--seed", type=int, default=0, help="seed of the workload (default 0)")
    load.add_argument("--response-format", metavar="FORMAT", default=None,
                      help="ask every request for structured output: json_object, or a JSON schema file (sent as "
                           "a strict json_schema); the report counts the outputs that parse")
    load.add_argument("--model", default=None, help="model id to ask for (default: the server's first)")
    load.add_argument("--api-key", default=None, help="bearer key, if the server wants one")
    load.add_argument("--name", default=None, help="system name in the report (default: detected)")
    load.add_argument("--warmup", type=int, default=1, help="untimed requests first (default 1)")
    add_slo_arguments(load)
    load.add_argument("--json", metavar="PATH", default=None, help="write the benchmark JSON here (an existing "
                                                                   "file of the same workload gains this system)")
    load.set_defaults(run=cmd_bench_serve)

    demo = commands.add_parser("demo", help="the Gradio chat front-end",
                               description="A chat UI that streams replies with their TTFT and tokens/s and a live "
                                           "throughput plot; in-process engine, or any server given by --url.")
    add_model_flags(demo)
    demo.add_argument("--url", default=None, help="talk to this OpenAI-compatible server instead of loading MODEL")
    demo.add_argument("--api-key", default=None, help="bearer key for --url")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    demo.set_defaults(run=cmd_demo)


def cmd_up(args: argparse.Namespace) -> None:
    import importlib.util
    import os
    import signal
    import threading

    from .config import RouterConfig, ScaleConfig
    from .monitor.logs import configure_logging, log_level
    from .route import POLICIES
    from .scale import up

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
    serve_args = ["--device", args.device, "--dtype", args.dtype]
    if args.max_num_seqs:
        serve_args += ["--max-num-seqs", str(args.max_num_seqs)]
    level = log_level(args.log_level)
    serve_args += ["--log-level", level]  # (up() gives the replicas the router's access log and traces endpoint)
    if args.backend == "ray" and (args.access_log or args.otlp_traces_endpoint):
        raise ValueError("--access-log and --otlp-traces-endpoint need --backend local (Ray Serve has its own)")
    configure_logging(level)
    for flag, value in (("--slo-ttft-ms", args.slo_ttft_ms), ("--slo-itl-ms", args.slo_itl_ms),
                        ("--slo-e2e-ms", args.slo_e2e_ms)):
        if value is not None:
            serve_args += [flag, repr(value)]
    if args.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise OSError("--backend ray needs ray[serve], the optional 'ray' extra: pip install -e '.[ray]'")
    stop = threading.Event()
    hangup = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()  # the terminal closed: drain all the same
    for sig in (signal.SIGTERM, signal.SIGINT, *hangup):
        signal.signal(sig, lambda *_: stop.set())
    print(f"labkit: starting {scale.min_replicas} replica(s) of {args.model} ...", file=sys.stderr, flush=True)
    if args.backend == "ray":  # the same replica app, on Ray Serve's router and autoscaler
        from .scale.ray_backend import up_on_ray

        lab = up_on_ray(args.model, scale=scale, router=router, device=args.device, dtype=args.dtype,
                        engine_options={"max_num_seqs": args.max_num_seqs} if args.max_num_seqs else None)
        for sig in (signal.SIGTERM, signal.SIGINT):  # ray.init installs its own handlers: ours again
            signal.signal(sig, lambda *_: stop.set())
        print(f"labkit: Ray Serve runs {args.model} on {lab.url} ({scale.min_replicas}-{scale.max_replicas} "
              f"replicas; Ctrl-C to stop)", flush=True)
        try:
            stop.wait()
        finally:
            lab.stop()
        print("labkit: Ray Serve deployment stopped", flush=True)
        return
    lab = up(args.model, encoder=None if args.encoder.lower() == "none" else args.encoder, scale=scale,
             router=router, port=args.port, host=args.host, policy=args.policy, serve_args=serve_args,
             api_key=router.api_key, drain_timeout_s=args.drain_timeout,
             **({"min_replicas": scale.min_replicas, "max_replicas": scale.max_replicas} if autoscaled
                else {"replicas": scale.min_replicas}))
    mode = (f"autoscaling {scale.min_replicas}-{scale.max_replicas} at {scale.target_ongoing_requests:g} in flight "
            f"per replica" if autoscaled else "fixed pool")
    print(f"labkit: routing to {len(lab.pool.ready())} replica(s) of {args.model} on {lab.url} (policy {args.policy}, "
          f"{mode}; /metrics has labkit:replicas; Ctrl-C to stop)", flush=True)
    if autoscaled:
        lab.bus.subscribe(lambda e: print(f"labkit: scale {e.current} -> {e.desired} ({e.reason})", flush=True),
                          __import__("labkit.monitor.events", fromlist=["ScaleDecision"]).ScaleDecision)
    try:
        stop.wait()
        print(f"labkit: draining: new requests get 503, in-flight ones have {args.drain_timeout:g} s", flush=True)
    finally:
        lab.stop()
    print("labkit: router and replicas stopped", flush=True)


def add_up_command(commands) -> None:
    """`labkit up`: router + replicas (+ autoscaler)."""
    from .config import RouterConfig, ScaleConfig

    up = commands.add_parser("up", help="router + replicas: a fixed pool (--replicas) or autoscaled (--min/--max)",
                             description="Start replicas of MODEL (each a `labkit serve` process with its share of "
                                         "the cores) behind an OpenAI-compatible router. --replicas N keeps N; "
                                         "--min-replicas A --max-replicas B lets the autoscaler follow the load. "
                                         "Ctrl-C or SIGTERM drains and stops everything: new requests get 503, "
                                         "in-flight ones have --drain-timeout to finish, then end with an error.")
    add_model_flags(up)
    up.add_argument("--encoder", default="none", help="encoder each replica also serves for /v1/embeddings "
                                                      "(default none)")
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
    add_slo_arguments(up)
    up.add_argument("--threads-per-replica", type=positive_int, default=None,
                    help="torch threads per replica (default: the cores split evenly)")
    up.add_argument("--max-num-seqs", type=positive_int, default=None, help="each replica's running batch size")
    add_observability_arguments(up, " (the router's and the replicas')")
    up.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local: replica processes on this machine (default); ray: the same replicas as a Ray Serve "
                         "deployment, on a local Ray instance or a cluster (needs the 'ray' extra)")
    up.set_defaults(run=cmd_up)


def cmd_bench_optimize(args: argparse.Namespace) -> None:
    import json

    from .bench.optimize_bench import OptimizeWorkload, format_table, run_optimize_bench

    variants = tuple(args.variants.split(",")) if args.variants else None
    workload = OptimizeWorkload(decode_tokens=args.decode_tokens)
    print(f"labkit bench optimize: {args.model}, one variant at a time", file=sys.stderr)
    result = run_optimize_bench(args.model, variants, workload, log=lambda line: print(line, file=sys.stderr))
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
        print(f"labkit: wrote {args.json}", file=sys.stderr)


def add_optimize_commands(bench_commands) -> None:
    """`labkit bench optimize`, added to the `bench` subcommands."""
    from .optimize import OPTIMIZERS

    optimize = bench_commands.add_parser(
        "optimize", help="quantized, exported and pruned variants of one model: speed, size, accuracy",
        description="Measure each optimization variant of MODEL against fp32 in one process: weight MB, load s, "
                    "prefill ms (256-token prompt), decode tokens/s at batch 1 and 16, perplexity and greedy "
                    f"agreement (cosine for encoders). Variants: {', '.join(OPTIMIZERS)}.")
    optimize.add_argument("--model", default=DEFAULT_LLM, help=f"alias, Hugging Face id or local path "
                                                               f"(default {DEFAULT_LLM})")
    optimize.add_argument("--variants", default=None, help="comma-separated subset (default: all that apply)")
    optimize.add_argument("--decode-tokens", type=positive_int, default=32, help="greedy tokens per timing "
                                                                                 "(default 32)")
    optimize.add_argument("--json", metavar="PATH", default=None, help="write the benchmark JSON here")
    optimize.set_defaults(run=cmd_bench_optimize)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_LLM, help=f"alias, Hugging Face id or local path (default {DEFAULT_LLM})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weight dtype; auto is bfloat16 where the hardware has it natively (default auto)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is not None and getattr(args, "tune", False):
        args.tune = False  # a tuned restart replays the process's command line: only when that is what runs here
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("\nlabkit: interrupted", file=sys.stderr)
        return 130
    except (ModelNotFoundError, ValueError, TypeError, OSError) as err:
        print(f"labkit: error: {err}", file=sys.stderr)
        return 2
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
