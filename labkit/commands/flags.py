"""Flag types and the flag groups several commands share: the model, the engine (vLLM's names), goodput SLOs,
and logs and traces."""
from __future__ import annotations

import argparse

from ..config import EngineConfig
from ..models import DEFAULT_LLM
from ..monitor.logs import ENV, LEVELS


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


def add_model_flags(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """--model, --device and --dtype. `positional`: the model is the command's MODEL, as in `vllm serve MODEL`,
    with --model kept as another way to say it (`model_from` reconciles the two)."""
    described = f"alias, Hugging Face id or local path (default {DEFAULT_LLM})"
    if positional:
        parser.add_argument("model_tag", metavar="MODEL", nargs="?", default=None, help=described)
        parser.add_argument("--model", default=None, help="the same as MODEL")
    else:
        parser.add_argument("--model", default=DEFAULT_LLM, help=described)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weight dtype; auto is bfloat16 where the hardware has it natively (default auto)")


def model_from(args: argparse.Namespace) -> str:
    """The model MODEL or --model names (a ValueError when they name two), else the default."""
    if args.model_tag and args.model and args.model_tag != args.model:
        raise ValueError(f"MODEL is {args.model_tag!r} but --model is {args.model!r}; give one of them")
    return args.model_tag or args.model or DEFAULT_LLM


def named(model: str | None) -> str | None:
    """The model, or None where it is left out or given as 'none' (any case): no such model."""
    return None if model is None or model.lower() == "none" else model


def add_serving_model_flags(parser: argparse.ArgumentParser) -> None:
    """The served model's name and whether its own code may run: serve, and up for each replica."""
    parser.add_argument("--served-model-name", metavar="NAME", default=None,
                        help="the model id the API answers to and labels its metrics with (default: MODEL as given)")
    add_trust_remote_code(parser)


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a Hugging Face model run the Python code it ships (default: refuse such models)")


# vLLM's flags for the engine's limits: (flag, EngineConfig field, what it bounds).
ENGINE_FLAGS = (
    ("--max-model-len", "max_model_len", "longest prompt + output in tokens, within the model's context and the KV "
                                         "cache; longer requests get 400 (default: as long as those allow)"),
    ("--max-num-seqs", "max_num_seqs", f"most requests in the running batch (default {EngineConfig.max_num_seqs})"),
    ("--max-num-batched-tokens", "max_num_batched_tokens",
     "tokens one engine step computes; longer prompts prefill in chunks (default "
     f"{EngineConfig.max_num_batched_tokens})"),
    ("--kv-cache-tokens", "kv_cache_tokens",
     f"KV cache size in tokens, allocated once at start (default {EngineConfig.kv_cache_tokens})"),
)


def add_engine_flags(parser: argparse.ArgumentParser, whose: str = "") -> None:
    for flag, field, described in ENGINE_FLAGS:
        parser.add_argument(flag, dest=field, type=positive_int, default=None, metavar="N", help=described + whose)


def engine_options(args: argparse.Namespace) -> dict:
    """The EngineConfig fields the engine flags set (those left out keep EngineConfig's defaults)."""
    return {field: getattr(args, field) for _, field, _ in ENGINE_FLAGS if getattr(args, field) is not None}


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The engine flags as given, for `labkit serve` processes started on the user's behalf."""
    return [part for flag, field, _ in ENGINE_FLAGS if getattr(args, field) is not None
            for part in (flag, str(getattr(args, field)))]


def add_slo_flags(parser: argparse.ArgumentParser) -> None:
    """Goodput's service-level objectives, the same flags on serve, up and bench serve (labkit/monitor/slo.py)."""
    parser.add_argument("--slo-ttft-ms", type=positive_float, default=None, metavar="MS",
                        help="goodput SLO on time to first token")
    parser.add_argument("--slo-itl-ms", type=positive_float, default=None, metavar="MS",
                        help="goodput SLO on each request's mean inter-token latency")
    parser.add_argument("--slo-e2e-ms", type=positive_float, default=None, metavar="MS",
                        help="goodput SLO on end-to-end latency")


def slo_from(args: argparse.Namespace):
    from ..monitor.slo import SLO

    return SLO(ttft_ms=args.slo_ttft_ms, itl_ms=args.slo_itl_ms, e2e_ms=args.slo_e2e_ms)


def slo_flags(args: argparse.Namespace) -> list[str]:
    """The SLO flags as given, for `labkit serve` processes started on the user's behalf."""
    given = (("--slo-ttft-ms", args.slo_ttft_ms), ("--slo-itl-ms", args.slo_itl_ms), ("--slo-e2e-ms", args.slo_e2e_ms))
    return [part for flag, value in given if value is not None for part in (flag, repr(value))]


def add_observability_flags(parser: argparse.ArgumentParser, whose: str) -> None:
    """The access log, traces and log level: the same flags on serve and up."""
    parser.add_argument("--access-log", metavar="PATH", default=None,
                        help=f"append one ECS JSON line per request{whose} to PATH ('-' for stdout)")
    parser.add_argument("--otlp-traces-endpoint", metavar="URL", default=None,
                        help=f"send a trace span per request{whose} to this OTLP/HTTP collector, e.g. "
                             "http://127.0.0.1:4318/v1/traces (default: no tracing)")
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS, default=None,
                        help=f"labkit's own logs (ECS JSON on stderr) from this level up (default: ${ENV}, else info)")
