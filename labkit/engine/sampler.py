"""Next tokens from logits, for a whole batch at once.

All-greedy batches (the common case for benchmarks and tests) take one argmax. Otherwise temperature,
top-k and top-p are applied as tensor operations over the batch, and each row draws its token with the
exponential-race trick (argmax of p / E, E ~ Exp(1)), using the request's own generator when it has a seed:
a seeded request then gets the same tokens whatever else shares its batch.
"""
from __future__ import annotations

import torch

from .request import Request


class Sampler:
    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)  # for requests without a seed of their own

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> list[int]:
        logits = logits.float()  # sampling in float32, like transformers' generate
        # [server, issue 4] fp32 logits are the runner's inference-mode tensor itself (.float() is a no-op), which
        # cannot be written in place out here: copy before masking (found by the server's schemathesis fuzzing).
        if logits.is_inference() and any(request.needs_min_tokens_mask for request in requests):
            logits = logits.clone()
        for row, request in enumerate(requests):
            if request.needs_min_tokens_mask:
                logits[row, request.min_tokens_masked_ids] = float("-inf")
        if all(request.params.greedy for request in requests):
            return logits.argmax(dim=-1).tolist()
        greedy = logits.argmax(dim=-1).tolist()
        sampled_rows = [row for row, request in enumerate(requests) if not request.params.greedy]
        params = [requests[row].params for row in sampled_rows]
        chosen = logits[sampled_rows]
        temperatures = torch.tensor([p.temperature for p in params], device=logits.device)
        chosen.div_(temperatures.unsqueeze(1))
        top_k = torch.tensor([p.top_k for p in params], device=logits.device)
        if bool((top_k > 0).any()):
            chosen = _apply_top_k(chosen, top_k)
        top_p = torch.tensor([p.top_p for p in params], device=logits.device)
        if bool((top_p < 1).any()):
            chosen = _apply_top_p(chosen, top_p)
        probs = chosen.softmax(dim=-1).cpu()
        for i, row in enumerate(sampled_rows):
            generator = requests[row].generator or self.generator
            noise = torch.empty_like(probs[i]).exponential_(generator=generator)
            greedy[row] = int(probs[i].div_(noise).argmax())
        return greedy


def _apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep each row's top_k largest logits (rows with top_k 0 keep all)."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth_largest = logits.topk(int(k.max()), dim=-1).values.gather(1, (k - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def _apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least top_p (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach top_p.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p.unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
