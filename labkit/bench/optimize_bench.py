"""`labkit bench optimize`: every optimization variant of one model, measured in one process so the
ratios to fp32 hold even when other jobs share the CPU.

Per variant: weight MB, load s (base load plus the optimization), prefill ms for a 256-token prompt,
greedy decode tokens/s at batch 1 and batch 16, and accuracy against fp32 (perplexity on the shipped
public-domain text and greedy-token agreement for causal LMs; embedding cosine for encoders)."""
from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from ..models import DEFAULT_LLM, LoadedModel, load_model
from ..optimize import optimize, unservable_reason
from ..optimize.accuracy import SENTENCES, embedding_cosine, greedy_agreement, greedy_tokens, perplexity, reference_text
from ..optimize.decode import encode_batch, greedy

CAUSAL_VARIANTS = ("fp32", "bf16", "torch-int8", "bnb-8bit", "bnb-4bit", "prune", "onnx", "onnx-int8")
ENCODER_VARIANTS = ("fp32", "bf16", "torch-int8", "bnb-8bit", "onnx", "onnx-int8")
DECODE_PROMPT = "Once upon a time, in a quiet village by the sea,"


@dataclass(frozen=True)
class OptimizeWorkload:
    prompt_tokens: int = 256  # prefill is timed on a prompt of this length
    decode_tokens: int = 32  # greedy tokens per row when timing decode
    batch_sizes: tuple[int, ...] = (1, 16)
    repeats: int = 3  # interleaved timing rounds; the fastest is the least disturbed by other jobs


def run_optimize_bench(model: str = DEFAULT_LLM, variants: tuple[str, ...] | None = None,
                       workload: OptimizeWorkload = OptimizeWorkload(), log=print) -> dict:
    """Build every variant, score its accuracy, then time them in interleaved rounds (each round times
    every variant once; each figure is the best round), so a burst of load from another process slows
    all variants alike instead of one."""
    base = load_model(model, device="cpu", dtype="float32", progress=False)
    causal = base.kind == "causal-lm"
    names = variants or (CAUSAL_VARIANTS if causal else ENCODER_VARIANTS)
    reference = greedy_tokens(base) if causal else None
    built: dict[str, LoadedModel] = {}
    systems: dict[str, dict] = {}
    for name in names:
        variant = built[name] = base if name == "fp32" else optimize(base, name)
        systems[name] = {"weight_bytes": variant.weight_bytes, "weight_mb": round(variant.weight_mb, 1),
                         "load_s": round(variant.load_seconds, 2), **accuracy(variant, base, reference),
                         "servable_by_engine": unservable_reason(variant) is None}
        if hasattr(variant.model, "providers"):
            systems[name]["onnx_providers"] = variant.model.providers
        log(f"  built {name:<11} " + ", ".join(f"{k}={v}" for k, v in systems[name].items()))
    timings = {name: {} for name in names}
    for round_ in range(workload.repeats):
        for name, variant in built.items():
            for key, seconds in time_once(variant, workload).items():
                timings[name][key] = min(seconds, timings[name].get(key, float("inf")))
        log(f"  timing round {round_ + 1}/{workload.repeats} done")
    for name in names:
        systems[name].update(speeds(timings[name], workload))
        log(f"  {name:<12} " + ", ".join(f"{k}={v}" for k, v in systems[name].items() if "_s" in k or "ms" in k))
    built.clear()
    gc.collect()
    return {"machine": machine(), "workload": {"model": model, "kind": base.kind, **asdict(workload)},
            "systems": systems, "ratios": ratios(systems)}


def accuracy(variant: LoadedModel, base: LoadedModel, reference) -> dict:
    if variant.kind == "causal-lm":
        return {"perplexity": round(perplexity(variant), 3),
                "greedy_agreement": round(greedy_agreement(reference, greedy_tokens(variant)), 3)}
    return {"cosine_to_fp32": round(embedding_cosine(base, variant), 5)}


def time_once(variant: LoadedModel, workload: OptimizeWorkload) -> dict[str, float]:
    """Seconds for one prefill of the long prompt and, for causal LMs, one short and one long greedy
    run per batch size (the difference is pure decode)."""
    prompt = variant.tokenizer(reference_text(), return_tensors="pt")["input_ids"][:, : workload.prompt_tokens]
    mask = torch.ones_like(prompt)
    if variant.kind != "causal-lm":
        sentences = list(SENTENCES) * 2  # a batch of 16
        run = lambda: variant.model(input_ids=prompt, attention_mask=mask, token_type_ids=torch.zeros_like(prompt))  # noqa: E731
        with torch.inference_mode():
            run()  # warm-up
            return {"prefill": _timed(run), "embed_b16": _timed(lambda: variant.embed(sentences))}
    out = {"prefill": _timed(lambda: greedy(variant.model, prompt, mask, 1))}
    for batch in workload.batch_sizes:
        ids, mask = encode_batch(variant.tokenizer, [DECODE_PROMPT] * batch)
        greedy(variant.model, ids, mask, 2)  # warm-up (allocations, lazy kernels)
        out[f"first_b{batch}"] = _timed(lambda: greedy(variant.model, ids, mask, 1))
        out[f"total_b{batch}"] = _timed(lambda: greedy(variant.model, ids, mask, workload.decode_tokens))
    return out


def speeds(best: dict[str, float], workload: OptimizeWorkload) -> dict[str, float]:
    """Decode tokens/s from (N tokens - 1 token) seconds: that difference covers N-1 decode steps."""
    out = {"prefill_ms_256": round(1000 * best["prefill"], 1)}
    if "embed_b16" in best:
        out["embed_sentences_per_s_b16"] = round(16 / best["embed_b16"], 1)
    for batch in workload.batch_sizes:
        if f"total_b{batch}" in best:
            decode = max(best[f"total_b{batch}"] - best[f"first_b{batch}"], 1e-9)
            out[f"decode_tokens_per_s_b{batch}"] = round(batch * (workload.decode_tokens - 1) / decode, 1)
    return out


def ratios(systems: dict[str, dict]) -> dict[str, float]:
    fp32 = systems.get("fp32")
    if not fp32:
        return {}
    out = {}
    for name, row in systems.items():
        for key in ("decode_tokens_per_s_b1", "decode_tokens_per_s_b16", "embed_sentences_per_s_b16"):
            if key in row and fp32.get(key):
                out[f"{name}/{key}"] = round(row[key] / fp32[key], 2)
        if "perplexity" in row:
            out[f"{name}/perplexity_change"] = round(row["perplexity"] / fp32["perplexity"] - 1, 4)
        out[f"{name}/weight_bytes"] = round(row["weight_bytes"] / fp32["weight_bytes"], 3)
    return out


def meets_target(result: dict, speedup: float = 2.0, perplexity_tolerance: float = 0.05) -> list[str]:
    """Variants decoding at batch 1 at least `speedup` x fp32 with perplexity within the tolerance."""
    r = result["ratios"]
    return [name for name in result["systems"] if name != "fp32"
            and r.get(f"{name}/decode_tokens_per_s_b1", 0) >= speedup
            and abs(r.get(f"{name}/perplexity_change", 1)) <= perplexity_tolerance]


def machine() -> dict:
    from ..monitor import cpu_reading

    cpu = cpu_reading()
    return {"cpu": cpu.model, "cores": cpu.physical_cores, "memory_gib": round(cpu.memory_total_bytes / 2**30, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            # other jobs share this CPU: the load average says how much, ratios are what to trust
            "load_average_1m": round(os.getloadavg()[0], 2)}


def format_table(result: dict) -> str:
    systems = result["systems"]
    causal = result["workload"]["kind"] == "causal-lm"
    head = ["variant", "weight MB", "load s", "prefill ms (256)"]
    head += ["decode tok/s b1", "decode tok/s b16", "perplexity", "Δ ppl", "greedy agree"] if causal \
        else ["embed sent/s b16", "cosine to fp32"]
    rows = [head]
    base_ppl = systems.get("fp32", {}).get("perplexity")
    for name, s in systems.items():
        row = [name, f"{s['weight_mb']:.1f}", f"{s['load_s']:.2f}", f"{s['prefill_ms_256']:.0f}"]
        if causal:
            change = f"{100 * (s['perplexity'] / base_ppl - 1):+.1f}%" if base_ppl else "-"
            row += [f"{s['decode_tokens_per_s_b1']:.1f}", f"{s['decode_tokens_per_s_b16']:.1f}",
                    f"{s['perplexity']:.2f}", change, f"{s['greedy_agreement']:.2f}"]
        else:
            row += [f"{s['embed_sentences_per_s_b16']:.1f}", f"{s['cosine_to_fp32']:.4f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started
