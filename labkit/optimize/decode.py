"""A plain greedy loop over `model(input_ids, attention_mask, position_ids, <kv cache>)`: the one contract
Hugging Face models and the ONNX Runtime variant share, so both are timed and compared alike."""
from __future__ import annotations

import inspect

import torch


def cache_keyword(model) -> str:
    """The name a model's forward takes its KV cache by, and returns it under. transformers renamed
    `past_key_values` to `cache` after 5.17 (labkit's floor, which knows only the old name); 5.24 warns on
    the old name and 5.40 drops it. The ONNX Runtime variant keeps the old name."""
    forward = getattr(model, "forward", model)
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


@torch.inference_mode()
def greedy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Exactly `new_tokens` greedy tokens per row (no early stop, so timings compare like for like).
    Rows may be left-padded; positions then start at each row's first real token."""
    cache = cache_keyword(model)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True)
    chosen = [out.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(new_tokens - 1):
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=chosen[-1], attention_mask=attention_mask, position_ids=positions, use_cache=True,
                    **{cache: getattr(out, cache)})
        chosen.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(chosen, dim=1)


def encode_batch(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask, so every row's last position is its newest token."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    return batch["input_ids"], batch["attention_mask"]
