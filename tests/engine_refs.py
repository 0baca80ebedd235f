"""Helpers for the engine tests: Hugging Face `generate` as the reference, and varied prompts."""
from __future__ import annotations

import random

import torch

WORDS = ("the cat sat on a warm mat while seven quiet engineers wrote careful tests about batching "
         "tokens pages and caches under a bright morning sky").split()


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, pad_token_id: int = 2) -> list[int]:
    """The tokens HF generate produces for this prompt alone, greedy, EOS honoured."""
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad_token_id)
    return out[0, len(prompt_ids):].tolist()


def varied_prompts(tokenizer, count: int, seed: int = 0, longest_words: int = 60) -> list[list[int]]:
    """`count` prompts of varied lengths (1 to about `longest_words` words) as token ids."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        length = 1 + (index * 7919 + rng.randrange(longest_words)) % longest_words
        prompts.append(tokenizer(" ".join(rng.choice(WORDS) for _ in range(length)))["input_ids"])
    return prompts


def load_fp32(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)
