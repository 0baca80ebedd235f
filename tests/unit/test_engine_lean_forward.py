"""The Llama family's lean forward (engine/llama_forward.py) against transformers' modules: which models take it,
and greedy tokens equal to HF `generate` through both paths, with chunked prefill and prefix-cache hits."""
from __future__ import annotations

import pytest
from engine_refs import hf_greedy, load_fp32, varied_prompts

from labkit.engine import LLM, SamplingParams
from labkit.engine.llama_forward import unsupported_reason

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("arch, path", [("llama", "lean"), ("qwen2", "lean"), ("mistral", "lean"),
                                        ("gpt2", "generic")])
def test_which_models_take_the_lean_forward(tiny_model_dirs, arch, path):
    model, tokenizer = load_fp32(tiny_model_dirs[arch])
    with LLM(model, tokenizer, kv_cache_tokens=256, page_size=16) as llm:
        runner = llm.engine.runner
        assert runner.forward_path == path
        assert (runner.generic_reason is None) == (path == "lean")
    if arch == "gpt2":
        assert "gpt2" in unsupported_reason(model)
    with LLM(model, tokenizer, kv_cache_tokens=256, page_size=16, lean_forward=False) as llm:
        assert llm.engine.runner.forward_path == "generic" and llm.engine.runner.generic_reason == "lean_forward=False"


def test_a_replaced_projection_sends_the_model_to_the_generic_path(tiny_model_dirs):
    import torch

    model, _ = load_fp32(tiny_model_dirs["llama"])
    layer = model.model.layers[0].mlp
    original = layer.down_proj

    class Wrapped(torch.nn.Module):  # what a quantizer does: another module type in the projection's place
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    layer.down_proj = Wrapped(original)
    try:
        assert "Wrapped" in unsupported_reason(model)
    finally:
        layer.down_proj = original


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_lean_and_generic_paths_both_match_hf(tiny_model_dirs, arch):
    model, tokenizer = load_fp32(tiny_model_dirs[arch])
    shared = [t for p in varied_prompts(tokenizer, 8, seed=3) for t in p][:40]  # a prefix of two and a half pages
    prompts = varied_prompts(tokenizer, 10, seed=7) + [shared + p[:9] for p in varied_prompts(tokenizer, 4, seed=9)]
    lengths = [3 + (i * 7) % 20 for i in range(len(prompts))]
    expected = [hf_greedy(model, p, n) for p, n in zip(prompts, lengths)]
    params = [SamplingParams(temperature=0, max_tokens=n) for n in lengths]
    for lean in (True, False):
        # A small token budget: long prompts arrive in chunks, and later ones find the shared pages cached.
        with LLM(model, tokenizer, kv_cache_tokens=2048, page_size=16, max_num_batched_tokens=48,
                 lean_forward=lean) as llm:
            outs = llm.generate(prompts, params, use_tqdm=False)
            assert sum(o.num_cached_tokens or 0 for o in outs) >= 32, "the shared prefix should hit the cache"
        assert [o.token_ids for o in outs] == expected, (arch, lean)


def test_the_runners_input_batch_frees_the_rows_of_requests_aborted_between_steps(tiny_model_dirs):
    """Aborts land between steps; the step after them may schedule nothing. The runner still hears of them
    (with the next plan it gets), so its rows never run out."""
    model, tokenizer = load_fp32(tiny_model_dirs["llama"])
    with LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16, max_num_seqs=2) as llm:
        engine = llm.engine
        for round_ in range(3):  # more requests over time than the input batch has rows
            ids = [engine.add_request([5, 6, 7 + round_], SamplingParams(max_tokens=8)).request_id for _ in range(2)]
            engine.step()
            for request_id in ids:
                engine.abort(request_id)
            assert engine.step() == []  # nothing left to schedule
        [out] = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=4))
        assert len(out.token_ids) == 4
        assert len(engine.runner.input_batch.row_of) <= 2
