"""The engine on CUDA: decode steps replayed from CUDA graphs (engine/cuda_graphs.py) make the greedy tokens of
the same steps run op by op, and every decode-only step replays one."""
from __future__ import annotations

import pytest
from engine_refs import varied_prompts

from labkit import load_model
from labkit.engine import LLM, SamplingParams

pytestmark = [pytest.mark.integration, pytest.mark.gpu]

LENGTHS = [5, 48, 12, 30, 20, 64, 9]


@pytest.fixture(scope="module")
def default_llm_cuda_fp32():
    return load_model("smollm2-135m-instruct", device="cuda", dtype="float32", progress=False)


def _greedy(loaded, prompts, **config):
    params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True) for n in LENGTHS]
    with LLM(loaded.model, loaded.tokenizer, kv_cache_tokens=4096, page_size=16, **config) as llm:
        tokens = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        return tokens, llm.engine.stats(), llm.engine.runner.graphs_off_reason


def test_graphed_decode_steps_make_the_eager_greedy_tokens_on_cuda(default_llm_cuda_fp32):
    prompts = varied_prompts(default_llm_cuda_fp32.tokenizer, len(LENGTHS), seed=5)
    eager, eager_stats, _ = _greedy(default_llm_cuda_fp32, prompts, enforce_eager=True)
    graphed, stats, off_reason = _greedy(default_llm_cuda_fp32, prompts)
    assert "cuda_graphs" not in eager_stats
    assert off_reason is None and stats["cuda_graphs"] >= 4 and stats["cuda_graph_replays"] >= max(LENGTHS) - 2
    # a padded batch may take another cuBLAS kernel (sums in another order): the first tokens must agree
    assert [t[:8] for t in graphed] == [t[:8] for t in eager]
    agreeing = sum(a == b for g, e in zip(graphed, eager) for a, b in zip(g, e))
    print(f"graphed/eager: {agreeing} of {sum(LENGTHS)} tokens equal; {stats['cuda_graphs']} graphs captured in "
          f"{stats['cuda_graph_capture_s']} s, {stats['cuda_graph_replays']} replays")


def test_a_graphed_decode_step_syncs_with_the_gpu_only_to_read_its_tokens(default_llm_cuda_fp32):
    """The issue's contract: no host-device syncs per step beyond reading the sampled tokens. torch's sync debug
    mode warns at every synchronizing call; decode-only steps (after the prompts are in) are counted."""
    import warnings

    import torch

    loaded = default_llm_cuda_fp32
    prompts = varied_prompts(loaded.tokenizer, 4, seed=6)
    with LLM(loaded.model, loaded.tokenizer, kv_cache_tokens=4096, page_size=16) as llm:
        engine = llm.engine
        for ids in prompts:
            engine.add_request(ids, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        for _ in range(3):  # the prompts, then two warm decodes
            engine.step()
        steps = 16
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(steps):
                    engine.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        print(f"{len(syncs)} synchronizing calls in {steps} graphed decode steps: "
              f"{sorted({str(w.message)[:80] for w in syncs})}")
        assert engine.stats()["cuda_graph_replays"] >= steps
        assert len(syncs) <= steps
