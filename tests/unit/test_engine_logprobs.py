"""Log-probabilities, prompt log-probabilities, n siblings, logit_bias and stop_token_ids through the engine
on the default model (float32), checked against the model's own forward pass."""
from __future__ import annotations

import pytest
import torch

from labkit.engine import LLM, SamplingParams

pytestmark = pytest.mark.unit
PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.fixture(scope="module")
def llm(default_llm_fp32):
    engine = LLM(default_llm_fp32, page_size=16, kv_cache_tokens=4096)
    yield engine
    engine.close()


def model_logprobs(loaded, ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at every position of `ids`, computed by transformers alone."""
    with torch.inference_mode():
        return loaded.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_output_and_prompt_logprobs_equal_the_models_log_softmax(llm, default_llm_fp32):
    [out] = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=6, logprobs=2, prompt_logprobs=1))
    ids = out.prompt_token_ids + out.token_ids
    reference = model_logprobs(default_llm_fp32, ids)
    n_prompt = len(out.prompt_token_ids)
    assert len(out.logprobs) == len(out.token_ids) and len(out.prompt_logprobs) == n_prompt
    assert out.prompt_logprobs[0] is None
    for position in range(1, len(ids)):
        entry = out.prompt_logprobs[position] if position < n_prompt else out.logprobs[position - n_prompt]
        token = ids[position]
        assert next(iter(entry)) == token
        assert entry[token].logprob == pytest.approx(reference[position - 1, token].item(), abs=1e-4)
        best = int(reference[position - 1].argmax())
        assert entry[best].rank == 1 and entry[best].decoded_token == default_llm_fp32.tokenizer.decode([best])
        if position >= n_prompt:  # greedy: each output token is the likeliest one
            assert entry[token].rank == 1
    assert out.cumulative_logprob == pytest.approx(sum(next(iter(e.values())).logprob for e in out.logprobs))
    assert len(out.outputs) == 1 and out.outputs[0].logprobs == out.logprobs


def test_prompt_logprobs_skip_the_prefix_cache_and_stay_the_same(llm):
    long_prompt = PROMPT * 4  # several full pages
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    [warm] = llm.generate(long_prompt, SamplingParams(temperature=0, max_tokens=1))
    [first] = llm.generate(long_prompt, params)
    [second] = llm.generate(long_prompt, params)
    [plain] = llm.generate(long_prompt, SamplingParams(temperature=0, max_tokens=1))
    assert plain.num_cached_tokens > 0  # the cache holds the prompt...
    assert first.num_cached_tokens == second.num_cached_tokens == 0  # ...but these computed it
    values = [[next(iter(e.values())).logprob for e in out.prompt_logprobs[1:]] for out in (first, second)]
    assert values[0] == pytest.approx(values[1], abs=1e-5)


def test_n_siblings_share_the_prompt_pages_and_are_reproducible(llm):
    llm.reset_prefix_cache()
    prompt = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
    params = SamplingParams(n=3, temperature=1.0, seed=-42, max_tokens=12, logprobs=0)
    [out] = llm.generate(prompt, params)
    [again] = llm.generate(prompt, params)
    assert len(out.outputs) == 3 and [c.index for c in out.outputs] == [0, 1, 2]
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # siblings draw their own tokens
    cached = [record for step in llm.steps for record in step.cached]
    page_tokens = (len(out.prompt_token_ids) - 1) // 16 * 16
    # In the first call, the two later siblings took the first one's full prompt pages from the cache.
    assert sum(1 for _, n in cached if n == page_tokens) >= 2 and page_tokens > 0
    assert all(len(c.logprobs) == len(c.token_ids) for c in out.outputs)


def test_logit_bias_forces_a_token_and_stop_token_ids_end_on_it(llm, default_llm_fp32):
    forced = default_llm_fp32.tokenizer.encode(" banana")[0]
    [out] = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=5, logit_bias={forced: 100.0}))
    assert out.token_ids == [forced] * 5
    [stopped] = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=5, logit_bias={forced: 100.0},
                                                    stop_token_ids=[forced]))
    assert stopped.token_ids == [forced] and stopped.finish_reason == "stop" and stopped.stop_reason == forced


def test_penalized_greedy_tokens_are_the_argmax_of_the_penalized_model_logits(llm, default_llm_fp32):
    """Each token, recomputed: the model's logits, penalized as vLLM does (prompt and output so far), argmax."""
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, repetition_penalty=1.8,
                            frequency_penalty=0.7, presence_penalty=0.4)
    [out] = llm.generate("one two one two one two one", params)
    [plain] = llm.generate("one two one two one two one", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert out.token_ids != plain.token_ids
    prompt = out.prompt_token_ids
    with torch.inference_mode():
        logits = default_llm_fp32.model(torch.tensor([prompt + out.token_ids])).logits[0].float()
    for step, token in enumerate(out.token_ids):
        row = logits[len(prompt) - 1 + step].clone()
        so_far = out.token_ids[:step]
        for t in set(prompt) | set(so_far):
            row[t] = row[t] / 1.8 if row[t] > 0 else row[t] * 1.8
        for t in set(so_far):
            row[t] -= 0.7 * so_far.count(t) + 0.4
        assert int(row.argmax()) == token
