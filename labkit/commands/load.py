"""LOAD from the command line: `labkit models`, `labkit generate`, `labkit info`."""
from __future__ import annotations

import argparse
import sys
from importlib import metadata

from ..models import ALIASES, ModelNotFoundError
from .flags import add_model_flags, add_trust_remote_code, non_negative_float, positive_int


def cmd_models(args: argparse.Namespace) -> None:
    from ..models import is_ready, package_dir, resolve_alias

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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print("\nAny Hugging Face id or local directory also loads when it is cached or reachable.")


def cmd_generate(args: argparse.Namespace) -> None:
    from ..generate import Generator
    from ..models import is_ready, load_model

    alias = ALIASES.get(args.model)
    # A bar only for the one-off conversion: a load from the cache takes about a second and needs none.
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                        progress=alias is not None and not is_ready(alias))
    with Generator(loaded) as generator:  # an encoder is refused here: UnsupportedModel, one line and exit 2
        print(f"[{loaded.name} {loaded.summary()['dtype']} on {loaded.device}: loaded in {loaded.load_seconds:.2f} s, "
              f"engine ready in {generator.ready_seconds * 1000:.0f} ms (built in {generator.build_seconds * 1000:.0f}"
              f" ms, then one untimed warm-up request)]", file=sys.stderr)
        reply = generator.stream(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                 chat=args.chat, seed=args.seed)
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if reply.num_tokens:
        rate = reply.decode_tokens_per_s
        pace = f", then {rate:.1f} tok/s" if rate is not None else ""
        print(f"[{reply.num_tokens} tokens in {reply.duration_s:.2f} s: first token after {reply.ttft_s * 1000:.0f} ms "
              f"(a {reply.num_prompt_tokens}-token prompt prefilled on the ready engine){pace}]", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> None:
    import platform

    import torch

    from ..monitor import cpu_reading, gpu_readings

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
    from ..engine import cpu_kernels

    missing = cpu_kernels.unavailable_reason()  # compiles them on first use (under a second), as the engine would
    if missing:
        print(f"  kernels       torch's ops for bf16 models: {missing}")
    else:
        matmul = "AMX tiles for every matmul" if cpu_kernels.amx_available() else "AVX512-BF16, oneDNN past 8 tokens"
        print(f"  kernels       labkit's own for bf16 models ({matmul})")


def add_load_commands(commands) -> None:
    """`labkit models`, `labkit generate` and `labkit info`."""
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
    add_trust_remote_code(generate)
    generate.add_argument("--max-tokens", type=positive_int, default=128, help="most tokens to generate (default 128)")
    generate.add_argument("--temperature", type=non_negative_float, default=0.7,
                          help="sampling temperature; 0 is greedy and deterministic (default 0.7)")
    generate.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    generate.add_argument("--chat", action="store_true", help="wrap PROMPT as a user message in the model's chat template")
    generate.set_defaults(run=cmd_generate)

    info = commands.add_parser("info", help="devices (NVML when present, else CPU) and versions",
                               description="Show library versions, GPUs through NVML when present, else the CPU.")
    info.set_defaults(run=cmd_info)
