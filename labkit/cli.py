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
                  f"{gpu.memory_total_bytes / 2**30:.1f} GiB used, utilisation {gpu.utilization_perc:.0f}%")
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
    return parser


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


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
