"""Automatic prefix caching keeps greedy outputs equal to Hugging Face `generate` (fp32), token for token,
whenever pages come from the cache: the same prompt twice, prompts sharing several pages, a shared prefix
ending mid-page, decodes reading shared pages together, preemption and abort of requests holding shared
pages, and chunked prefill continuing after cached pages. Tiny random Llama and GPT-2."""
from __future__ import annotations

import pytest
from engine_refs import hf_greedy, load_fp32

from labkit.config import EngineConfig
from labkit.engine import LLM, LLMEngine, SamplingParams

pytestmark = pytest.mark.unit
PAGE = 16


@pytest.fixture(scope="module", params=("llama", "gpt2"))
def tiny(request, tiny_model_dirs):
    return load_fp32(tiny_model_dirs[request.param])


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def shared_prompts(tokenizer, prefix_tokens: int, tails: list[str]) -> list[list[int]]:
    prefix = tokenizer(" ".join(["the system prompt says be kind and brief"] * 20))["input_ids"][:prefix_tokens]
    return [prefix + tokenizer(tail, add_special_tokens=False)["input_ids"] for tail in tails]


def test_the_same_prompt_twice_hits_the_cache_and_gives_the_same_tokens(tiny):
    model, tokenizer = tiny
    [prompt] = shared_prompts(tokenizer, 3 * PAGE + 5, ["and then?"])
    want = hf_greedy(model, prompt, 8)
    with LLM(model, tokenizer, kv_cache_tokens=1024, page_size=PAGE) as llm:
        [first] = llm.generate(prompt, greedy(8))
        [second] = llm.generate(prompt, greedy(8))
        assert first.num_cached_tokens == 0 and second.num_cached_tokens == 3 * PAGE
        assert first.token_ids == second.token_ids == want
        assert llm.stats()["prefix_cache_hit_rate"] == pytest.approx(3 * PAGE / (2 * len(prompt)))


@pytest.mark.parametrize("prefix_tokens", [4 * PAGE, 2 * PAGE + 7])  # whole pages, and ending mid-page
def test_decodes_sharing_cached_pages_match_hf(tiny, prefix_tokens):
    model, tokenizer = tiny
    prompts = shared_prompts(tokenizer, prefix_tokens, ["one", "two words", "three more words", "four"])
    lengths = [9, 5, 12, 7]
    want = [hf_greedy(model, p, n) for p, n in zip(prompts, lengths)]
    with LLM(model, tokenizer, kv_cache_tokens=2048, page_size=PAGE) as llm:
        llm.generate(prompts[0], greedy(1))  # computes the prefix once
        outs = llm.generate(prompts, [greedy(n) for n in lengths])  # then four decodes read its pages at once
        assert [o.token_ids for o in outs] == want
        assert all(o.num_cached_tokens == prefix_tokens // PAGE * PAGE for o in outs)
        assert max(len(s.requests) for s in llm.steps) == 4


def test_chunked_prefill_continues_after_cached_pages(tiny):
    model, tokenizer = tiny
    prompts = shared_prompts(tokenizer, 3 * PAGE, [" ".join(["tail"] * 60)])
    want = hf_greedy(model, prompts[0], 6)
    with LLM(model, tokenizer, kv_cache_tokens=2048, page_size=PAGE, max_num_batched_tokens=24) as llm:
        llm.generate(prompts[0][:3 * PAGE + 1], greedy(1))
        [out] = llm.generate(prompts, greedy(6))
        assert out.num_cached_tokens == 3 * PAGE and out.token_ids == want
        assert sum(1 for s in llm.steps[-12:] if s.num_tokens == 24) >= 2  # the rest came in several chunks


def test_preemption_and_abort_of_requests_holding_shared_pages(tiny):
    model, tokenizer = tiny
    prompts = shared_prompts(tokenizer, 2 * PAGE, ["alpha", "beta", "gamma"])
    want = [hf_greedy(model, p, 40) for p in prompts]
    # 10 pages: three requests each needing about 5 pages at the end cannot all fit: preemptions follow
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_tokens=10 * PAGE, page_size=PAGE))
    try:
        engine.add_request(prompts[0], greedy(1), request_id="warm")
        while engine.has_unfinished_requests():
            engine.step()
        for index, prompt in enumerate(prompts):
            engine.add_request(prompt, greedy(40), request_id=str(index))
        engine.add_request(prompts[0], greedy(40), request_id="gone")
        got, steps = {}, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    got[out.request_id] = out
            steps += 1
            if steps == 3:
                assert engine.abort("gone").finish_reason == "abort"  # while it shares the prefix's pages
            engine.scheduler.blocks.check()
        assert engine.scheduler.num_preemptions > 0
        assert [got[str(i)].token_ids for i in range(3)] == want
        assert engine.scheduler.blocks.num_used_pages == 0 and engine.scheduler.blocks.tables == {}
    finally:
        engine.close()
