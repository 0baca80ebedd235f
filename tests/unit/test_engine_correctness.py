"""Greedy outputs of the engine equal Hugging Face `generate` on each prompt alone, token for token, on tiny
random Llama, Qwen2, Mistral and GPT-2 models: alone, in a batch of 32 mixed lengths, with staggered
arrivals, with chunked prefill and with preemption."""
from __future__ import annotations

import pytest
from engine_refs import hf_greedy, load_fp32, varied_prompts

from labkit.engine import LLM, LLMEngine, SamplingParams
from labkit.config import EngineConfig

pytestmark = pytest.mark.unit
ARCHS = ("llama", "qwen2", "mistral", "gpt2")


@pytest.fixture(scope="module", params=ARCHS)
def case(request, tiny_model_dirs):
    """A tiny model, 32 prompts of 1..80 tokens, an output length for each, and HF's greedy tokens."""
    model, tokenizer = load_fp32(tiny_model_dirs[request.param])
    prompts = varied_prompts(tokenizer, 32, seed=ARCHS.index(request.param))
    lengths = [1 + (i * 5) % 24 for i in range(len(prompts))]
    expected = [hf_greedy(model, p, n) for p, n in zip(prompts, lengths)]
    return request.param, model, tokenizer, prompts, lengths, expected


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n)


def test_alone_matches_hf(case):
    arch, model, tokenizer, prompts, lengths, expected = case
    with LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16) as llm:
        for prompt, n, want in list(zip(prompts, lengths, expected))[:6]:
            [out] = llm.generate(prompt, greedy(n))
            assert out.token_ids == want, arch
            assert out.finish_reason == ("stop" if len(want) < n else "length")


def test_batch_of_32_mixed_lengths_matches_hf(case):
    arch, model, tokenizer, prompts, lengths, expected = case
    with LLM(model, tokenizer, kv_cache_tokens=4096, page_size=16, max_num_batched_tokens=4096) as llm:
        outs = llm.generate(prompts, [greedy(n) for n in lengths], use_tqdm=False)
        assert max(len(s.requests) for s in llm.steps) == 32  # they really ran together
    assert [o.token_ids for o in outs] == expected, arch


def test_staggered_arrivals_match_hf(case):
    """Requests join a batch that is already decoding, and leave it at different times."""
    arch, model, tokenizer, prompts, lengths, expected = case
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_tokens=4096, page_size=16))
    got = {}
    pending = list(range(len(prompts)))
    try:
        while pending or engine.has_unfinished_requests():
            for index in pending[:5]:  # five newcomers every other step
                engine.add_request(prompts[index], greedy(lengths[index]), request_id=str(index))
            pending = pending[5:]
            for _ in range(2):
                for out in engine.step():
                    if out.finished:
                        got[int(out.request_id)] = out.token_ids
        joined_late = [s for s in engine.steps if len(s.requests) > 1 and any(n == 1 for _, n in s.requests)
                       and any(n > 1 for _, n in s.requests)]
        assert joined_late, "some step should mix decodes with a newcomer's prefill"
    finally:
        engine.close()
    assert [got[i] for i in range(len(prompts))] == expected, arch


def test_chunked_prefill_and_preemption_match_hf(case):
    """A 16-token step budget splits prompts into chunks; a 12-page cache forces preemptions."""
    arch, model, tokenizer, prompts, lengths, expected = case
    config = dict(max_num_batched_tokens=16, kv_cache_tokens=192, page_size=16, max_num_seqs=8)
    with LLM(model, tokenizer, **config) as llm:
        outs = llm.generate(prompts, [greedy(n) for n in lengths], use_tqdm=False)
        stats = llm.stats()
        chunk_steps = {}
        for step in llm.steps:
            assert step.num_tokens <= 16
            for request_id, n in step.requests:
                if n > 1:
                    chunk_steps[request_id] = chunk_steps.get(request_id, 0) + 1
    assert stats["num_preemptions"] > 0 and stats["kv_peak_usage"] == 1.0
    assert stats["kv_pages_used"] == 0  # everything given back
    assert max(chunk_steps.values()) > 2  # some prompt took several prefill chunks
    assert [o.token_ids for o in outs] == expected, arch
    assert sum(o.metrics.num_preemptions for o in outs) == stats["num_preemptions"]
