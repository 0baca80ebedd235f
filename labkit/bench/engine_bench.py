"""`labkit bench engine`: the same fixed workload through four systems, one after another, in one process.

hf-sequential (HF generate, one request at a time), hf-static (HF generate over left-padded batches of 8),
hf-continuous (transformers' own continuous batching, cache bounded like ours) and labkit; on request also
vllm (vLLM's CPU build in a subprocess of its own venv, vllm_baseline.py). The machine's
roofline (matmul FLOP/s in the dtype, memory copy GB/s, on the device the model runs on) is measured in the same
run, so labkit's model FLOP utilisation and weight-bandwidth utilisation come from numbers taken minutes apart, not
from a datasheet. The workload's MFU is the batched figure (up to `max_num_seqs` requests at once); one request alone, decoding
BATCH1_TOKENS tokens, gives the batch-1 figure: weights read per second against the copy bandwidth, since a
decode step at batch 1 reads every weight once and does little else.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import replace
from importlib import metadata

import torch

from ..config import EngineConfig
from ..monitor.percentiles import percentile
from . import baselines, roofline, vllm_baseline
from .engine_workload import OPTIONAL_SYSTEMS, PREFIX_SYSTEMS, SYSTEMS, WORKLOADS
from .measure import SHARED_ABOVE, ContentionMeter, contention_warning, tail_name

BATCH1_TOKENS = 128  # llama-bench's tg128: long enough that the first token's prefill is a small part


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
            "transformers": metadata.version("transformers"), "torch_threads": torch.get_num_threads(),
            "ld_preload": os.environ.get("LD_PRELOAD", ""), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2), "python": platform.python_version()}


def summarise(run: baselines.SystemRun, wanted: list[int]) -> dict:
    tokens = sum(r.output_tokens for r in run.requests)
    latencies = [r.latency_s for r in run.requests]
    exact = all(r.output_tokens == n for r, n in zip(run.requests, wanted))
    return {"output_tokens": tokens, "wall_s": round(run.wall_s, 3),
            "output_tokens_per_s": round(tokens / run.wall_s, 1),
            "latency_p50_s": round(percentile(latencies, 0.5), 3),
            "latency_p99_s": round(percentile(latencies, 0.99), 3), "latency_max_s": round(max(latencies), 3),
            "requests": len(latencies),
            "ttft_mean_s": round(statistics.fmean(r.ttft_s for r in run.requests), 3),
            "tokens_as_requested": exact, "notes": run.notes}


def run_labkit(loaded, prompts, lengths, config: EngineConfig) -> tuple[baselines.SystemRun, dict]:
    from ..engine import LLM, SamplingParams

    with LLM(loaded.model, loaded.tokenizer, config) as llm:
        llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
        llm.reset_prefix_cache()  # the timed run starts cold: nothing of the warm-up's prompts is cached
        params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True) for n in lengths]
        started, steps_before = time.perf_counter(), llm.engine.num_steps
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - started
        num_steps = llm.engine.num_steps - steps_before
        steps = [s for s in llm.steps if s.started >= started]  # the log's window: enough for the peak batch
        engine_stats = llm.stats()
        alone = _batch1_decode(llm, min(prompts, key=len))
    timings = [baselines.RequestTiming(len(o.token_ids), o.metrics.ttft_s, o.metrics.e2e_latency_s) for o in outs]
    extra = {"steps": num_steps, "kv_cache_bytes": engine_stats["kv_memory_bytes"],
             "kv_peak_usage": round(engine_stats["kv_peak_usage"], 3), "preemptions": engine_stats["num_preemptions"],
             "peak_batch": max(len(s.requests) for s in steps),
             "cpu_threads_at_end": engine_stats.get("cpu_threads"),  # the thread governor's choice (CPU only)
             "cpu_thread_changes": engine_stats.get("cpu_thread_changes", 0), **alone,
             **{k: engine_stats[k] for k in ("cuda_graphs", "cuda_graph_capture_s") if k in engine_stats}}
    return baselines.SystemRun(wall, timings, f"EngineConfig{_fields(config)}"), extra


def _batch1_decode(llm, prompt: list[int]) -> dict:
    """One request alone, BATCH1_TOKENS greedy tokens from a cold cache: its decode rate, the first token's
    time (the prefill) left out."""
    from ..engine import SamplingParams

    llm.reset_prefix_cache()
    params = SamplingParams(temperature=0, max_tokens=BATCH1_TOKENS, min_tokens=BATCH1_TOKENS, ignore_eos=True)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    decode_s = out.metrics.e2e_latency_s - out.metrics.ttft_s
    return {"batch1_output_tokens": len(out.token_ids),
            "batch1_decode_tokens_per_s": round((len(out.token_ids) - 1) / decode_s, 1)}


def run_prefix_cache(loaded, prompts, lengths, config: EngineConfig) -> tuple[baselines.SystemRun, dict]:
    """The shared-prefix workload on labkit as `config` says (cache on or off): each request alone, in
    order, for its TTFT (what one user of a long-prompt assistant waits); then all at once, from a cold
    cache, for tokens/s."""
    from ..engine import LLM, SamplingParams

    def exact(n):
        return SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True)

    with LLM(loaded.model, loaded.tokenizer, config) as llm:
        llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)  # warm-up
        llm.reset_prefix_cache()
        alone = [llm.generate([p], exact(n), use_tqdm=False)[0] for p, n in zip(prompts, lengths)]
        llm.reset_prefix_cache()
        started = time.perf_counter()
        outs = llm.generate(prompts, [exact(n) for n in lengths], use_tqdm=False)
        wall = time.perf_counter() - started
        stats = llm.stats()
    timings = [baselines.RequestTiming(len(o.token_ids), o.metrics.ttft_s, o.metrics.e2e_latency_s) for o in outs]
    after_first = [o.metrics.ttft_s for o in alone[1:]]
    extra = {"ttft_alone_first_s": round(alone[0].metrics.ttft_s, 4),
             "ttft_alone_after_first_mean_s": round(statistics.fmean(after_first), 4),
             "cached_tokens_alone": sum(o.num_cached_tokens for o in alone),
             "cached_tokens_batch": sum(o.num_cached_tokens for o in outs),
             "prefix_cache_hit_rate": round(stats["prefix_cache_hit_rate"], 3)}
    return baselines.SystemRun(wall, timings, f"EngineConfig{_fields(config)}"), extra


def _share(meter: ContentionMeter) -> float | None:
    share = meter.share()
    return None if share is None else round(share, 3)


def _fields(config: EngineConfig) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in vars(config).items()) + ")"


def bench_engine(model: str = "smollm2-135m-instruct", requests: int = 32, seed: int = 0, dtype: str = "bfloat16",
                 systems: tuple[str, ...] | None = None, config: EngineConfig | None = None, log=print,
                 workload_name: str = "default", vllm_python: str | None = None, device: str = "cpu") -> dict:
    """`device`: where the model and the roofline run ("auto": CUDA when there is one)."""
    from ..models import load_model

    config = config or EngineConfig()
    systems = systems or (PREFIX_SYSTEMS if workload_name == "shared-prefix" else SYSTEMS)
    if "vllm" in systems:
        vllm_baseline.probe(vllm_python)  # fail in seconds, before the model loads, if vLLM cannot run
    loaded = load_model(model, device=device, dtype=dtype, progress=False)
    if workload_name not in WORKLOADS:
        raise ValueError(f"Unknown workload {workload_name!r}; choose from {', '.join(WORKLOADS)}.")
    workload = WORKLOADS[workload_name](num_requests=requests, seed=seed)
    chats, lengths = zip(*workload.requests())
    tokenizer = loaded.tokenizer
    prompts = [tokenizer(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"] for c in chats]
    lengths = list(lengths)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    log(f"workload: {requests} chat requests, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
        f"outputs {sum(lengths)} tokens ({min(lengths)}-{max(lengths)} each), {loaded.name} {dtype} on {loaded.device}")
    # Warm HF's generate too, so no system pays for first-call set-up inside its timing.
    baselines.hf_sequential(loaded.model, prompts[:1], [2], pad)
    results, extras = {}, {}  # extras: what a labkit run measures beyond the common summary
    for name in systems:
        log(f"running {name} ...")
        contention = ContentionMeter()
        if name == "hf-sequential":
            run = baselines.hf_sequential(loaded.model, prompts, lengths, pad)
        elif name == "hf-static":
            run = baselines.hf_static(loaded.model, prompts, lengths, pad, batch_size=8)
        elif name == "hf-continuous":
            run = baselines.hf_continuous(loaded.model, prompts, lengths, kv_cache_tokens=config.kv_cache_tokens,
                                          max_batch_tokens=config.max_num_batched_tokens,
                                          max_num_seqs=config.max_num_seqs)
        elif name == "labkit" and workload_name == "shared-prefix":
            run, extras[name] = run_prefix_cache(loaded, prompts, lengths, replace(config, enable_prefix_caching=True))
        elif name == "labkit-no-prefix-cache":
            run, extras[name] = run_prefix_cache(loaded, prompts, lengths,
                                                 replace(config, enable_prefix_caching=False))
        elif name == "labkit":
            run, extras[name] = run_labkit(loaded, prompts, lengths, config)
        elif name == "vllm":
            run, extras[name] = vllm_baseline.run_vllm(vllm_python, loaded.source, prompts, lengths, dtype)
        else:
            raise ValueError(f"Unknown system {name!r}; choose from {', '.join(SYSTEMS + OPTIONAL_SYSTEMS)}.")
        results[name] = {**summarise(run, lengths), **extras.get(name, {}), "cpu_contention": _share(contention)}
        log(f"  {name}: {results[name]['output_tokens_per_s']} tok/s over {results[name]['wall_s']} s")
        if warning := contention_warning(results[name]["cpu_contention"]):
            log(f"  {warning}")
    log("measuring the roofline ...")
    ceiling = roofline.measure(loaded.dtype, loaded.device)
    report = {"machine": {**machine(), **ceiling}, "model": loaded.summary(),
              "workload": {**workload.describe(), "prompt_tokens": sum(map(len, prompts)),
                           "output_tokens": sum(lengths)},
              "systems": results, "ratios": {}}
    if "labkit" in results:
        ours = results["labkit"]
        report["ratios"] = {f"labkit_vs_{name}": round(ours["output_tokens_per_s"] / r["output_tokens_per_s"], 2)
                            for name, r in results.items() if name != "labkit"}
        if workload_name == "shared-prefix" and "labkit-no-prefix-cache" in results:
            off = results["labkit-no-prefix-cache"]
            report["ratios"]["ttft_alone_after_first_on_over_off"] = round(
                ours["ttft_alone_after_first_mean_s"] / off["ttft_alone_after_first_mean_s"], 3)
        else:
            ours.update(_utilisation(loaded, ours, extras["labkit"], sum(map(len, prompts)), ceiling))
    report["all_tokens_as_requested"] = all(r["tokens_as_requested"] for r in results.values())
    return report


def _utilisation(loaded, ours: dict, extra: dict, prompt_tokens: int, ceiling: dict) -> dict:
    """Model FLOPs (2 per parameter per token: prompt tokens skip the LM head) over the wall time, against the
    matmul peak; and weight bytes read (once per step) per second, against memory copy bandwidth, for the
    workload and for the batch-1 decode (one step per token)."""
    head = loaded.model.get_output_embeddings()
    head_params = head.weight.numel() if head is not None else 0
    flops = 2 * loaded.num_parameters * ours["output_tokens"] + 2 * (loaded.num_parameters - head_params) * prompt_tokens
    achieved = flops / ours["wall_s"] / 1e9
    weight_gbps = loaded.weight_bytes * extra["steps"] / ours["wall_s"] / 1e9
    batch1_gbps = loaded.weight_bytes * extra["batch1_decode_tokens_per_s"] / 1e9
    return {"achieved_gflops": round(achieved, 1), "mfu": round(achieved / ceiling["matmul_gflops"], 4),
            "weight_read_gbps": round(weight_gbps, 1),
            "weight_bandwidth_utilisation": round(weight_gbps / ceiling["memory_copy_gbps"], 4),
            "batch1_weight_read_gbps": round(batch1_gbps, 1),
            "batch1_weight_bandwidth_utilisation": round(batch1_gbps / ceiling["memory_copy_gbps"], 4)}


def _percent(fraction: float) -> str:
    """Three significant figures: a GPU's MFU of a small model reads 0.0172%, not 0.0%."""
    return f"{fraction * 100:.3g}%"


def format_report(report: dict) -> str:
    # The p99 of fewer than 100 requests is their slowest: the column says "max" then.
    tail = tail_name(min((r.get("requests", 100) for r in report["systems"].values()), default=100))
    rows = [f"{'system':<23}{'tok/s':>9}{'wall s':>9}{'p50 s':>8}{tail + ' s':>8}{'TTFT s':>8}  tokens"]
    for name, r in report["systems"].items():
        slowest = r["latency_max_s"] if tail == "max" else r["latency_p99_s"]
        rows.append(f"{name:<23}{r['output_tokens_per_s']:>9.1f}{r['wall_s']:>9.2f}{r['latency_p50_s']:>8.2f}"
                    f"{slowest:>8.2f}{r['ttft_mean_s']:>8.2f}  {r['output_tokens']}"
                    f"{'' if r['tokens_as_requested'] else '  (NOT as requested)'}")
    m = report["machine"]
    where = m["gpu"] if "gpu" in m else f"{m['threads']} threads; {m['cpu']}"
    rows.append(f"roofline: matmul {m['matmul_gflops']} GFLOP/s ({m['matmul_dtype']}), memory copy "
                f"{m['memory_copy_gbps']} GB/s, {where}")
    prefix = {n: r for n, r in report["systems"].items() if "ttft_alone_after_first_mean_s" in r}
    for name, r in prefix.items():
        rows.append(f"{name}: each request alone, TTFT of the first {r['ttft_alone_first_s'] * 1000:.1f} ms, of the "
                    f"rest {r['ttft_alone_after_first_mean_s'] * 1000:.1f} ms on average; "
                    f"{r['cached_tokens_alone']} prompt tokens from the cache")
    if "ttft_alone_after_first_on_over_off" in report["ratios"]:
        rows.append(f"prefix cache: TTFT after the first request x{report['ratios']['ttft_alone_after_first_on_over_off']}"
                    f" of the cache-off figure")
    elif "labkit" in report["systems"]:
        ours = report["systems"]["labkit"]
        ratios = ", ".join(f"{k.removeprefix('labkit_vs_')} x{v}" for k, v in report["ratios"].items())
        rows.append("labkit: " + (ratios + "; " if ratios else "")
                    + f"{ours['achieved_gflops']} GFLOP/s = MFU {_percent(ours['mfu'])} (up to {ours['peak_batch']} "
                    f"requests at once); weights read at {ours['weight_read_gbps']} GB/s = "
                    f"{_percent(ours['weight_bandwidth_utilisation'])} of copy bandwidth")
        if "cuda_graphs" in ours:
            rows.append(f"labkit: {ours['cuda_graphs']} CUDA graphs of decode steps, captured in "
                        f"{ours['cuda_graph_capture_s']} s (at start, and on first use for contexts past 256 tokens)")
        rows.append(f"labkit at batch 1: {ours['batch1_decode_tokens_per_s']} tok/s decoding "
                    f"{ours['batch1_output_tokens']} tokens; weights read at {ours['batch1_weight_read_gbps']} GB/s = "
                    f"{_percent(ours['batch1_weight_bandwidth_utilisation'])} of copy bandwidth")
    contended = {n: r["cpu_contention"] for n, r in report["systems"].items()
                 if (r.get("cpu_contention") or 0) > SHARED_ABOVE}
    if contended:
        rows.append("SHARED CPU: " + ", ".join(f"{n} ran with a task waiting for a CPU {share:.0%} of the time"
                                                for n, share in contended.items())
                    + "; those figures are low and noisy, and ratios with them are not the engines' own")
    return "\n".join(rows)
