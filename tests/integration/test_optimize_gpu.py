"""bitsandbytes and ONNX Runtime on CUDA: skipped without a GPU (the conftest adds the skip)."""
from __future__ import annotations

import pytest
import torch

from labkit import load_model
from labkit.optimize import optimize
from labkit.optimize.decode import encode_batch, greedy

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


@pytest.fixture(scope="module")
def tiny_llama_cuda(tiny_model_dirs):
    return load_model(tiny_model_dirs["llama"], device="cuda", dtype="float16", progress=False)


@pytest.mark.parametrize("name, layer", [("bnb-8bit", "Linear8bitLt"), ("bnb-4bit", "Linear4bit")])
def test_bitsandbytes_on_cuda_quantizes_and_generates(tiny_llama_cuda, name, layer):
    variant = optimize(tiny_llama_cuda, name)
    assert any(type(m).__name__ == layer for m in variant.model.modules())
    assert next(variant.model.parameters()).device.type == "cuda"
    assert variant.weight_bytes < tiny_llama_cuda.weight_bytes
    ids, mask = encode_batch(variant.tokenizer, ["Hello there", "A longer prompt here"])
    assert greedy(variant.model, ids.cuda(), mask.cuda(), 4).shape == (2, 4)


def test_onnx_runtime_picks_a_gpu_provider_when_onnxruntime_gpu_has_one(tiny_llama_cuda):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA provider (install the gpu extra: onnxruntime-gpu)")
    variant = optimize(tiny_llama_cuda, "onnx")
    assert variant.model.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    ids = torch.tensor([[1, 5, 9, 13]])
    reference = tiny_llama_cuda.model(input_ids=ids.cuda()).logits.float().cpu()
    assert torch.allclose(variant.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, reference, atol=1e-2)
