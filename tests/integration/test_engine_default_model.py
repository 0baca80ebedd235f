"""The engine on the real default model (smollm2-135m-instruct, float32): greedy outputs equal HF generate for
each prompt alone, in a mixed batch with staggered arrivals; stop strings on real text; the public API."""
from __future__ import annotations

import pytest
from engine_refs import hf_greedy

from labkit import LLM, SamplingParams

pytestmark = pytest.mark.integration

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a child in two sentences.",
    "List three uses of a paperclip.",
    "Why is the sky blue? Answer briefly, then give one everyday example and one experiment a student could do "
    "at home with a glass of water and a torch.",
    "Say hello.",
]


@pytest.fixture(scope="module")
def setup(default_llm_fp32):
    loaded = default_llm_fp32
    tokenizer = loaded.tokenizer
    prompts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                                       tokenize=False), add_special_tokens=False)["input_ids"]
               for c in CHATS]
    prompts += [tokenizer(t)["input_ids"] for t in ("The capital of France is", "def fibonacci(n):")]
    lengths = [24, 16, 32, 20, 40, 8, 12, 30]
    expected = [hf_greedy(loaded.model, p, n) for p, n in zip(prompts, lengths)]
    return loaded, prompts, lengths, expected


def test_default_model_batch_matches_hf_generate(setup):
    loaded, prompts, lengths, expected = setup
    with LLM(loaded, max_num_batched_tokens=64) as llm:  # a small budget: prompts arrive in chunks, staggered
        outs = llm.generate(prompts, [SamplingParams(temperature=0, max_tokens=n) for n in lengths])
        assert any(len(s.requests) > 4 for s in llm.steps)
    for out, want, n in zip(outs, expected, lengths):
        assert out.token_ids == want
        assert out.finish_reason == ("stop" if want[-1] == loaded.tokenizer.eos_token_id else "length")
    assert "Paris" in outs[0].text
    assert outs[0].metrics.ttft_s <= outs[0].metrics.e2e_latency_s


def test_default_model_alone_and_stop_strings(setup):
    loaded, prompts, lengths, expected = setup
    with LLM(loaded) as llm:
        [alone] = llm.generate(prompts[6], SamplingParams(temperature=0, max_tokens=12))
        assert alone.token_ids == expected[6]
        full = loaded.tokenizer.decode(expected[7], skip_special_tokens=True)
        stop = "return"
        assert stop in full
        [cut] = llm.generate(prompts[7], SamplingParams(temperature=0, max_tokens=30, stop=[stop]))
        assert cut.finish_reason == "stop" and cut.stop_reason == stop
        assert cut.text == full[:full.index(stop)]
        assert len(cut.token_ids) < len(expected[7]) and cut.token_ids == expected[7][:len(cut.token_ids)]
        [chat] = llm.generate([{"role": "user", "content": CHATS[0]}], SamplingParams(temperature=0, max_tokens=24))
        assert chat.token_ids == expected[0]
