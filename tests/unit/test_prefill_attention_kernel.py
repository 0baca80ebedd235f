"""cpu_kernels.prefill_attention (every prefill chunk of a step in one call, from the paged cache) against SDPA
and a float64 reference, and the engine's greedy tokens with it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit.engine import cpu_kernels

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(cpu_kernels.unavailable_reason() is not None,
                                 reason=f"no labkit CPU kernels here: {cpu_kernels.unavailable_reason()}")]


def bf16(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(torch.bfloat16)


def _step(chunks, page_size, kv_heads, heads, dim, seed=0):
    """A packed step of prefill chunks, each (tokens, tokens already cached before it), over a cache whose pages
    are handed out shuffled. Returns q, the caches, the kernel's slots and chunk table, and each chunk's
    (rows, context slots) for the references."""
    total = sum(tokens for tokens, _ in chunks)
    pages_needed = sum(-(-(tokens + cached) // page_size) for tokens, cached in chunks)
    pool = pages_needed + 3
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(pool, generator=generator)
    # NaN in every slot no chunk owns: padding a kernel reads by mistake would show
    keys = torch.full((pool, page_size, kv_heads, dim), float("nan"), dtype=torch.bfloat16)
    values = keys.clone()
    fresh_keys, fresh_values = bf16(pool * page_size, kv_heads, dim, seed=seed + 1), bf16(pool * page_size, kv_heads, dim, seed=seed + 2)
    q = bf16(total, heads + kv_heads, dim, seed=seed + 3, scale=2.0)[:, :heads]  # strided rows, as the forward hands them
    slots, table, references, row, taken = [], [], [], 0, 0
    for tokens, cached in chunks:
        context = tokens + cached
        pages = order[taken:taken + -(-context // page_size)]
        taken += len(pages)
        context_slots = (pages.unsqueeze(1) * page_size + torch.arange(page_size)).reshape(-1)[:context]
        keys.view(-1, kv_heads, dim)[context_slots] = fresh_keys[context_slots]
        values.view(-1, kv_heads, dim)[context_slots] = fresh_values[context_slots]
        table.append((row, tokens, context, sum(map(len, slots))))
        slots.append(context_slots)
        references.append((slice(row, row + tokens), context_slots))
        row += tokens
    return q, keys, values, torch.cat(slots), torch.tensor(table, dtype=torch.int64), references


def _reference(q, keys, values, references, dtype):
    """SDPA per chunk over its gathered context, causal from the chunk's position, in `dtype`."""
    heads, kv_heads, dim = q.shape[1], keys.shape[2], q.shape[2]
    out = torch.empty(q.shape, dtype=dtype)
    for rows, context_slots in references:
        queries = q[rows].transpose(0, 1).unsqueeze(0).to(dtype)
        k = keys.view(-1, kv_heads, dim)[context_slots].transpose(0, 1).unsqueeze(0).to(dtype)
        v = values.view(-1, kv_heads, dim)[context_slots].transpose(0, 1).unsqueeze(0).to(dtype)
        tokens, context = queries.shape[2], len(context_slots)
        mask = torch.arange(context).unsqueeze(0) <= torch.arange(context - tokens, context).unsqueeze(1)
        out[rows] = F.scaled_dot_product_attention(queries, k, v, attn_mask=mask, scale=dim ** -0.5,
                                                   enable_gqa=heads != kv_heads)[0].transpose(0, 1)
    return out


CHUNKS = [pytest.param([(1, 0)], id="one-token"),
          pytest.param([(5, 0), (16, 0), (17, 0), (33, 0), (100, 0)], id="first-chunks"),
          pytest.param([(37, 0), (17, 150), (1, 40), (64, 64)], id="continuing-chunks"),
          pytest.param([(88, 0), (60, 300)], id="long-context")]


needs_amx = pytest.mark.skipif(not cpu_kernels.amx_available(), reason="this CPU has no AMX tiles for bfloat16")
PATHS = [pytest.param(False, id="avx512"), pytest.param(True, id="amx", marks=needs_amx)]


@pytest.mark.parametrize("amx", PATHS)
@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("page_size", [64, 16])
@pytest.mark.parametrize("kv_heads, heads", [(3, 9), (4, 4)], ids=["gqa-3", "gqa-1"])
@pytest.mark.parametrize("dim", [64, 128, 32])
def test_prefill_attention_is_as_close_to_the_exact_result_as_sdpa(chunks, page_size, kv_heads, heads, dim, amx):
    q, keys, values, slots, table, references = _step(chunks, page_size, kv_heads, heads, dim)
    out = torch.full(q.shape, float("nan"), dtype=torch.bfloat16)
    cpu_kernels.prefill_attention(q, keys, values, slots, table, out, dim ** -0.5, amx)
    exact = _reference(q, keys, values, references, torch.float64)
    sdpa = _reference(q, keys, values, references, torch.bfloat16)
    assert not out.isnan().any()
    ours_off, sdpa_off = (out.double() - exact).abs(), (sdpa.double() - exact).abs()
    # the worst element is one rounding that may tip either way (up to 2% worse than SDPA's seen); on average closer
    assert ours_off.max() <= sdpa_off.max() * 1.05 and ours_off.mean() <= sdpa_off.mean() * 1.01


@pytest.mark.parametrize("amx", PATHS)
def test_prefill_attention_leaves_the_rows_of_other_tokens_alone(amx):
    q, keys, values, slots, table, references = _step([(5, 0), (9, 20)], 16, 3, 9, 64)
    table[:, 0] += 2  # two decode rows come first in the packed row
    q = torch.cat([bf16(2, 12, 64, seed=40)[:, :9], q])
    out = torch.zeros(q.shape, dtype=torch.bfloat16)
    cpu_kernels.prefill_attention(q, keys, values, slots, table, out, 0.125, amx)
    assert (out[:2] == 0).all() and (out[2:] != 0).any()


def test_prefill_attention_fits_whole_32_dimension_heads_up_to_128():
    assert [d for d in (16, 32, 48, 64, 96, 128, 256) if cpu_kernels.prefill_attention_fits(d)] == [32, 64, 96, 128]


def test_the_engine_prefills_through_the_kernel_and_keeps_its_greedy_tokens(default_llm_bf16, monkeypatch):
    from labkit import LLM, SamplingParams
    from labkit.config import EngineConfig

    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at",
               "Write a haiku about the sea. " * 12]  # the last runs past a 64-token budget: a continuing chunk
    greedy = SamplingParams(temperature=0, max_tokens=12)
    calls = []
    kernel = cpu_kernels.prefill_attention
    monkeypatch.setattr(cpu_kernels, "prefill_attention", lambda *args: calls.append(1) or kernel(*args))
    replies = {}
    for prefill_kernel in (True, False):
        if not prefill_kernel:  # the engine as before: SDPA per chunk, every other kernel still on
            monkeypatch.setattr(cpu_kernels, "prefill_attention_fits", lambda head_dim: False)
        with LLM(default_llm_bf16, config=EngineConfig(max_num_batched_tokens=64)) as llm:
            assert llm.engine.runner.attention.kernels
            before = len(calls)
            replies[prefill_kernel] = [o.token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
            assert (len(calls) > before) is prefill_kernel
    assert replies[True] == replies[False]
