"""Mechanics of each optimization on tiny random models: what each scheme promises about the weights."""
from __future__ import annotations

import warnings

import pytest
import torch

from labkit import load_model
from labkit.optimize import OPTIMIZERS, optimize, stored_bytes, unservable_reason, variant_of
from labkit.optimize.accuracy import greedy_agreement, next_token_agreement
from labkit.optimize.decode import cache_keyword, encode_batch, greedy
from labkit.optimize.prune import prunable_linears, sparsity_of
from labkit.optimize.torch_int8 import conv1d_to_linear

pytestmark = pytest.mark.unit
QUANTIZED_LINEAR = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dirs):
    return load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_model_dirs):
    return load_model(tiny_model_dirs["gpt2"], device="cpu", dtype="float32", progress=False)


def logits(loaded, ids):
    with torch.inference_mode():
        return torch.as_tensor(loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits)


def test_registry_names_the_documented_variants():
    assert {"fp32", "bf16", "torch-int8", "bnb-8bit", "bnb-4bit", "prune", "prune-structured", "onnx",
            "onnx-int8", "compile"} <= set(OPTIMIZERS)


def test_unknown_variant_fails_before_loading():
    with pytest.raises(ValueError, match="not one of"):
        load_model("/nonexistent/never-read", optimize="int3")


def test_load_model_applies_the_variant(tiny_model_dirs):
    loaded = load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False, optimize="bf16")
    assert variant_of(loaded) == "bf16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_torch_int8_stores_int8_weights_and_leaves_the_original_alone(tiny_llama):
    variant = optimize(tiny_llama, "torch-int8")
    quantized = {n: m for n, m in variant.model.named_modules() if isinstance(m, QUANTIZED_LINEAR)}
    assert quantized and all(m.weight().dtype == torch.qint8 for m in quantized.values())
    assert not any("down_proj" in n or "lm_head" in n for n in quantized)  # outlier-prone layers stay float
    assert variant.weight_bytes < tiny_llama.weight_bytes
    assert not any(isinstance(m, QUANTIZED_LINEAR) for m in tiny_llama.model.modules())
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.allclose(logits(variant, ids), logits(tiny_llama, ids), atol=0.05)
    assert variant_of(variant) == "torch-int8" and variant_of(tiny_llama) == "fp32"


def test_gpt2_conv1d_becomes_an_equivalent_linear_then_quantizes(tiny_gpt2):
    import copy

    ids = torch.tensor([[1, 5, 9, 13]])
    converted = copy.deepcopy(tiny_gpt2.model)
    assert conv1d_to_linear(converted) == 4 * tiny_gpt2.model.config.n_layer
    with torch.inference_mode():
        assert torch.allclose(converted(input_ids=ids).logits, tiny_gpt2.model(input_ids=ids).logits, atol=1e-5)
    variant = optimize(tiny_gpt2, "torch-int8")
    assert any(isinstance(m, QUANTIZED_LINEAR) for m in variant.model.modules())
    assert greedy(variant.model, ids, torch.ones_like(ids), 3).shape == (1, 3)


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_unstructured_pruning_reaches_the_asked_sparsity(tiny_llama, sparsity):
    variant = optimize(tiny_llama, "prune", sparsity=sparsity)
    assert sparsity_of(variant.model) == pytest.approx(sparsity, abs=0.01)
    assert sparsity_of(tiny_llama.model) < 0.01  # the base model keeps its weights
    assert not any(n.endswith("_orig") or n.endswith("_mask") for n, _ in variant.model.named_parameters())


def test_structured_pruning_zeroes_whole_rows(tiny_llama):
    variant = optimize(tiny_llama, "prune-structured", sparsity=0.25)
    for _, module in prunable_linears(variant.model):
        zero_rows = (module.weight == 0).all(dim=1).float().mean().item()
        assert zero_rows == pytest.approx(0.25, abs=1 / module.weight.shape[0])
    assert torch.equal(variant.model.model.embed_tokens.weight, tiny_llama.model.model.embed_tokens.weight)


@pytest.mark.parametrize("name, layer", [("bnb-8bit", "Linear8bitLt"), ("bnb-4bit", "Linear4bit")])
def test_bitsandbytes_variants_hold_quantized_layers_and_generate(tiny_llama, name, layer):
    variant = optimize(tiny_llama, name)
    assert any(type(m).__name__ == layer for m in variant.model.modules())
    assert variant.weight_bytes < tiny_llama.weight_bytes
    ids, mask = encode_batch(variant.tokenizer, ["Hello there", "A longer prompt here"])
    assert greedy(variant.model, ids, mask, 3).shape == (2, 3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_onnx_matches_torch_logits_and_greedy_tokens_with_its_kv_cache(tiny_model_dirs, arch):
    base = load_model(tiny_model_dirs[arch], device="cpu", dtype="float32", progress=False)
    variant = optimize(base, "onnx", level="all")
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    assert torch.allclose(logits(variant, ids), logits(base, ids), atol=1e-4)
    ids, mask = encode_batch(base.tokenizer, ["Hello there", "A longer prompt here"])  # left padding
    assert torch.equal(greedy(variant.model, ids, mask, 6), greedy(base.model, ids, mask, 6))
    assert variant.model.providers == ["CPUExecutionProvider"]
    assert variant.weight_bytes > 0


def test_onnx_int8_is_smaller_and_close(tiny_llama):
    onnx_fp32 = optimize(tiny_llama, "onnx")
    onnx_int8 = optimize(tiny_llama, "onnx-int8", level="basic")
    assert onnx_int8.weight_bytes < onnx_fp32.weight_bytes
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    assert torch.allclose(logits(onnx_int8, ids), logits(tiny_llama, ids), atol=0.1)


def test_onnx_variants_say_why_the_engine_cannot_serve_them(tiny_llama):
    variant = optimize(tiny_llama, "onnx")
    assert "cannot serve" in unservable_reason(variant)
    assert unservable_reason(optimize(tiny_llama, "torch-int8")) is None
    with pytest.raises(TypeError, match="cannot serve"):
        next(variant.model.parameters())


def test_stored_bytes_counts_packed_int8_weights(tiny_llama):
    variant = optimize(tiny_llama, "torch-int8")
    plain = sum(p.numel() * p.element_size() for p in variant.model.parameters())
    assert stored_bytes(variant.model) > plain  # packed int8 weights are not parameters


def test_greedy_agreement_counts_the_common_prefix():
    reference = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    candidate = torch.tensor([[1, 2, 9, 4], [5, 6, 7, 8]])
    assert greedy_agreement(reference, candidate) == pytest.approx((2 / 4 + 1) / 2)


def test_greedy_hands_the_kv_cache_over_without_deprecation_warnings(tiny_llama):
    ids, mask = encode_batch(tiny_llama.tokenizer, ["Hello there", "A longer prompt here"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' renamed cache argument warns this way
        tokens = greedy(tiny_llama.model, ids, mask, 4)
    full = torch.cat([ids, tokens[:, :3]], dim=1)  # the cached steps must pick what a fresh forward picks
    full_mask = torch.cat([mask, torch.ones_like(tokens[:, :3])], dim=1)
    with torch.inference_mode():
        fresh = tiny_llama.model(input_ids=full, attention_mask=full_mask,
                                 position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0), use_cache=False).logits
    assert torch.equal(fresh[:, ids.shape[1] - 1:].argmax(-1), tokens)


def test_cache_keyword_is_the_name_each_model_declares(tiny_llama):
    import inspect

    assert cache_keyword(tiny_llama.model) in inspect.signature(tiny_llama.model.forward).parameters
    assert cache_keyword(optimize(tiny_llama, "onnx", level="basic").model) == "past_key_values"


def test_next_token_agreement_is_total_for_the_same_model_and_partial_for_a_damaged_one(tiny_llama):
    same = next_token_agreement(tiny_llama, tiny_llama, max_tokens=512)
    assert same.share == 1.0 and same.margin_where_different is None and same.margin_overall > 0
    pruned = next_token_agreement(tiny_llama, optimize(tiny_llama, "prune", sparsity=0.7), max_tokens=512)
    assert 0 < pruned.share < 1 and pruned.margin_where_different >= 0
