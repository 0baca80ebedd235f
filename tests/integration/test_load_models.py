"""Real loading: tiny random models of four architectures, the real default LLM and encoder, offline."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from labkit import load_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_loads_tiny_models_of_each_architecture(tiny_model_dirs, arch):
    fp32 = load_model(tiny_model_dirs[arch], device="cpu", dtype="float32", progress=False)
    bf16 = load_model(tiny_model_dirs[arch], device="cpu", dtype="bfloat16", progress=False)
    assert fp32.kind == "causal-lm" and fp32.device == torch.device("cpu")
    assert fp32.num_parameters == sum(p.numel() for p in fp32.model.parameters()) > 0
    assert bf16.num_parameters == fp32.num_parameters
    assert fp32.weight_bytes >= 4 * fp32.num_parameters  # fp32 parameters, plus any buffers
    assert bf16.model.dtype == torch.bfloat16 and bf16.weight_bytes < 0.6 * fp32.weight_bytes
    assert not fp32.model.training
    assert fp32.load_seconds > 0


def test_default_llm_footprint(default_llm_fp32):
    summary = default_llm_fp32.summary()
    assert summary["architecture"] == "LlamaForCausalLM"
    assert default_llm_fp32.num_parameters == 134_515_008
    assert 500 < summary["weight_mb"] < 540  # 134.5M fp32 parameters, embeddings tied
    assert default_llm_fp32.tokenizer.eos_token == "<|im_end|>"
    assert default_llm_fp32.tokenizer.chat_template


def test_encoder_embeddings_rank_by_meaning(default_encoder):
    assert default_encoder.kind == "encoder"
    eating, bread, baby = default_encoder.embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert eating.shape == (384,)
    assert torch.allclose(eating.norm(), torch.tensor(1.0), atol=1e-5)
    assert eating @ bread > eating @ baby + 0.3


def test_cli_models_and_info():
    models = subprocess.run([sys.executable, "-m", "labkit.cli", "models"], capture_output=True, text=True)
    assert models.returncode == 0
    assert "smollm2-135m-instruct" in models.stdout and "minilm-l6-v2" in models.stdout
    info = subprocess.run([sys.executable, "-m", "labkit.cli", "info"], capture_output=True, text=True)
    assert info.returncode == 0
    assert "torch" in info.stdout and "CPU" in info.stdout and "cores" in info.stdout
    if not torch.cuda.is_available():
        assert "NVML not available" in info.stdout
    from labkit.engine import cpu_kernels

    kernels = next(line for line in info.stdout.splitlines() if line.strip().startswith("kernels"))
    reason = cpu_kernels.unavailable_reason()
    assert (reason in kernels) if reason else (("AMX" in kernels) is cpu_kernels.amx_available())


def test_an_encoder_given_to_the_engine_is_the_users_mistake_not_a_bug(default_encoder):
    from labkit import LLM
    from labkit.errors import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="needs a causal language model") as refused:
        LLM(default_encoder)
    # A TypeError for code that catches one; a ValueError, so the CLI prints one line and exits 2.
    assert isinstance(refused.value, TypeError) and isinstance(refused.value, ValueError)
