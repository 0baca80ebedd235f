"""`labkit bench`: engine, serve, optimize and monitor benchmarks (the runners live in labkit/bench/)."""
from __future__ import annotations

import argparse
import json
import sys

from ..bench.engine_workload import SYSTEMS, WORKLOADS
from ..config import EngineConfig
from ..models import DEFAULT_LLM
from ..optimize import OPTIMIZERS
from .flags import add_slo_flags, non_negative_float, positive_int


def _write_json(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as out:
            json.dump(report, out, indent=2)
        print(f"labkit: wrote {path}", file=sys.stderr)


def cmd_bench_engine(args: argparse.Namespace) -> None:
    from ..config import EngineConfig
    from ..openmp import restart_tuned

    if args.tune:  # the same allocator and OpenMP settings for every system (they only work from process start)
        restart_tuned()
    from ..bench.engine_bench import bench_engine, format_report

    config = EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                          adapt_threads=args.adapt_threads, enforce_eager=args.enforce_eager)
    systems = tuple(args.systems.split(",")) if args.systems else None
    report = bench_engine(args.model, args.requests, args.seed, args.dtype, systems, config,
                          log=lambda line: print(line, file=sys.stderr), workload_name=args.workload,
                          vllm_python=args.vllm_python, device=args.device)
    print(format_report(report))
    _write_json(args.json, report)
    if not report["all_tokens_as_requested"]:
        raise SystemExit("labkit bench engine: a system did not produce the requested number of tokens")


def cmd_bench_serve(args: argparse.Namespace) -> None:
    import os

    import httpx

    from ..bench.serve_bench import SLO, Workload, bench_serve, format_report, merge_reports, response_format

    structured = None if args.response_format is None else response_format(args.response_format)  # ValueError: exit 2
    workload = Workload(requests=args.requests, concurrency=args.concurrency, min_tokens=args.min_tokens,
                        max_tokens=args.max_tokens, seed=args.seed, temperature=args.temperature,
                        response_format=structured, name=args.workload)
    slo = SLO(ttft_ms=args.slo_ttft_ms, itl_ms=args.slo_itl_ms, e2e_ms=args.slo_e2e_ms)
    try:
        report = bench_serve(args.url, workload, model=args.model, api_key=args.api_key, slo=slo, name=args.name,
                             warmup=args.warmup)
    except httpx.TransportError as err:  # the server is not there: the world's failure, one line and exit 1
        raise OSError(f"cannot reach {args.url}: {err}") from None
    print(format_report(report))
    if args.json and os.path.exists(args.json):  # same workload, another server: one file compares them
        with open(args.json) as existing:
            report = merge_reports(json.load(existing), report)
    _write_json(args.json, report)


def cmd_bench_optimize(args: argparse.Namespace) -> None:
    from ..bench.optimize_bench import OptimizeWorkload, format_table, run_optimize_bench

    variants = tuple(args.variants.split(",")) if args.variants else None
    workload = OptimizeWorkload(decode_tokens=args.decode_tokens)
    print(f"labkit bench optimize: {args.model}, one variant at a time", file=sys.stderr)
    result = run_optimize_bench(args.model, variants, workload, log=lambda line: print(line, file=sys.stderr))
    print(format_table(result))
    _write_json(args.json, result)


def cmd_bench_monitor(args: argparse.Namespace) -> None:
    from ..openmp import restart_tuned

    if args.tune:
        restart_tuned()
    from ..bench.monitor_bench import bench_monitor, format_report

    report = bench_monitor(args.model, args.requests, args.rounds, args.seed, args.dtype,
                           log=lambda line: print(line, file=sys.stderr))
    print(format_report(report))
    _write_json(args.json, report)


def add_bench_commands(commands) -> None:
    """`labkit bench` and its subcommands."""
    bench = commands.add_parser("bench", help="benchmarks: engine, serve, optimize, monitor",
                                description="Benchmarks; see each subcommand.")
    benches = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    _add_bench_engine(benches)
    _add_bench_serve(benches)
    _add_bench_optimize(benches)
    _add_bench_monitor(benches)


def _add_bench_engine(benches) -> None:
    engine = benches.add_parser(
        "engine", help="labkit's engine against HF generate (sequential, static batches) and HF continuous batching",
        description="Run one fixed workload (N chat requests, outputs of 16-128 tokens, greedy) through "
                    "hf-sequential, hf-static, hf-continuous and labkit in this process; print tokens/s, latency, "
                    "TTFT, the ratios, and the machine's roofline with labkit's share of it. --workload "
                    "shared-prefix compares labkit with its prefix cache off and on instead.")
    engine.add_argument("--model", default=DEFAULT_LLM, help="alias, HF id or local directory")
    engine.add_argument("--requests", type=int, default=32, help="number of requests (default 32)")
    engine.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    engine.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights dtype")
    engine.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                        help="where the model and the roofline run (default cpu; auto: CUDA when there is one). On "
                             "CUDA, --systems labkit,hf-continuous skips the slow HF baselines")
    engine.add_argument("--systems", default=None, help=f"comma-separated subset of {','.join(SYSTEMS)}, plus vllm "
                                                        "(needs --vllm-python)")
    engine.add_argument("--vllm-python", metavar="PATH", default=None,
                        help="for --systems ...,vllm: a Python with vLLM's CPU build (`make vllm` makes "
                             ".venv-vllm/bin/python)")
    engine.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs,
                        help=f"labkit: most running requests (default {EngineConfig.max_num_seqs})")
    engine.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens,
                        help=f"labkit: per-step token budget (default {EngineConfig.max_num_batched_tokens})")
    engine.add_argument("--no-adapt-threads", dest="adapt_threads", action="store_false",
                        help="labkit: keep every torch thread even while another process shares the CPU")
    engine.add_argument("--enforce-eager", action="store_true",
                        help="labkit on a GPU: decode steps op by op, not replayed from CUDA graphs")
    engine.add_argument("--workload", default="default", choices=sorted(WORKLOADS),
                        help="default: varied chat requests through the four systems; shared-prefix: a long "
                             "system prompt and multi-turn chats through labkit with the prefix cache off and on "
                             "(TTFT of each request alone, then tokens/s of all at once)")
    engine.add_argument("--json", metavar="PATH", default=None, help="write the benchmark JSON here")
    engine.add_argument("--no-tune", dest="tune", action="store_false",
                        help="run in the environment as it is (default: restart with labkit's OpenMP defaults and "
                             "tcmalloc preloaded when present, the same for every system)")
    engine.set_defaults(run=cmd_bench_engine)


def _add_bench_serve(benches) -> None:
    load = benches.add_parser("serve", help="load test of any OpenAI-compatible server",
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
    load.add_argument("--workload", choices=("default", "engine"), default="default",
                      help="default: short questions, max_tokens drawn from the range (a reply may stop early); "
                           "engine: `bench engine`'s chats with their lengths enforced (min_tokens, ignore_eos), "
                           "so --workload engine --requests 32 serves exactly what `bench engine` runs")
    load.add_argument("--response-format", metavar="FORMAT", default=None,
                      help="ask every request for structured output: json_object, or a JSON schema file (sent as "
                           "a strict json_schema); the report counts the outputs that parse")
    load.add_argument("--model", default=None, help="model id to ask for (default: the server's first)")
    load.add_argument("--api-key", default=None, help="bearer key, if the server wants one")
    load.add_argument("--name", default=None, help="system name in the report (default: detected)")
    load.add_argument("--warmup", type=int, default=1, help="untimed requests first (default 1)")
    add_slo_flags(load)
    load.add_argument("--json", metavar="PATH", default=None, help="write the benchmark JSON here (an existing "
                                                                   "file of the same workload gains this system)")
    load.set_defaults(run=cmd_bench_serve)


def _add_bench_optimize(benches) -> None:
    optimize = benches.add_parser(
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


def _add_bench_monitor(benches) -> None:
    monitor = benches.add_parser(
        "monitor", help="engine tokens/s with and without monitoring, same process",
        description="Run the engine workload alternately with monitoring off (nobody subscribed) and on (rolling "
                    "statistics, Prometheus metrics, a 1 s watcher); print the tokens/s of each, their ratio, and "
                    "the cost of one publish.")
    monitor.add_argument("--model", default=DEFAULT_LLM, help="alias, HF id or local directory")
    monitor.add_argument("--requests", type=int, default=32, help="requests per run (default 32)")
    monitor.add_argument("--rounds", type=int, default=3, help="(off, on) pairs (default 3)")
    monitor.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    monitor.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights dtype")
    monitor.add_argument("--json", metavar="PATH", default=None, help="write the benchmark JSON here")
    monitor.add_argument("--no-tune", dest="tune", action="store_false",
                         help="run in the environment as it is (default: labkit's OpenMP defaults, tcmalloc if present)")
    monitor.set_defaults(run=cmd_bench_monitor)
