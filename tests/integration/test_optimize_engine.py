"""The engine serves the variants that stay Hugging Face models and refuses the others in one sentence."""
from __future__ import annotations

import pytest

from labkit import load_model
from labkit.optimize import optimize

pytestmark = pytest.mark.integration
engine = pytest.importorskip("labkit.engine")


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dirs):
    return load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)


@pytest.mark.parametrize("variant", ["torch-int8", "bf16", "bnb-8bit", "prune"])
def test_engine_serves_hugging_face_variants_like_hf_greedy(tiny_llama, variant):
    from labkit.engine import LLM, SamplingParams
    from labkit.optimize.decode import encode_batch, greedy

    optimized = optimize(tiny_llama, variant)
    llm = LLM(optimized, kv_cache_tokens=1024, page_size=16, max_num_seqs=4)
    prompt = "The capital of France is"
    [output] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    ids, mask = encode_batch(optimized.tokenizer, [prompt])
    assert output.token_ids == greedy(optimized.model, ids, mask, 6)[0].tolist()


def test_engine_refuses_onnx_with_the_reason(tiny_llama):
    from labkit.engine import LLM

    with pytest.raises(TypeError, match="cannot serve"):
        LLM(optimize(tiny_llama, "onnx"), kv_cache_tokens=1024, page_size=16)
