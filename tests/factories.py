"""Tiny random-weight decoder models of several architectures, saved as real Hugging Face directories.

They load through the same code paths as real checkpoints, in well under a second, so tests can cover
many model shapes. The tokenizer is the default model's (real BPE with a chat template)."""
from __future__ import annotations

from pathlib import Path

import torch

TINY_ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")


def tiny_config(arch: str, vocab_size: int, eos_token_id: int):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=eos_token_id, pad_token_id=eos_token_id)
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    decoder = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, **common)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch](**decoder)


def build_tiny_model(arch: str, folder: Path, tokenizer_source: str, seed: int = 0) -> Path:
    """Save a randomly initialised `arch` model with the tokenizer of `tokenizer_source` into `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), tokenizer.eos_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
