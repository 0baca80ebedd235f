"""Next tokens from logits, for a whole batch at once.

All-greedy batches (the common case for benchmarks and tests) take one argmax. Otherwise temperature,
top-k and top-p are applied as tensor operations over the batch, and each row draws its token by inverse
CDF: one uniform number per row, the first token whose cumulative probability passes it. The uniform comes
from the request's own generator when it has a seed, so a seeded request gets the same tokens whatever else
shares its batch. (The exponential race, argmax of p / E with E ~ Exp(1), needs a random number per
vocabulary entry: 0.8 ms per row for a 49K vocabulary, a third of a batch-32 decode step on this CPU.)
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
        vocab = logits.shape[-1]  # a top_k past the vocabulary keeps all of it
        top_k = torch.tensor([min(p.top_k, vocab) for p in params], device=logits.device)
        if bool((top_k > 0).any()):
            chosen = _apply_top_k(chosen, top_k)
        top_p = torch.tensor([p.top_p for p in params], device=logits.device)
        if bool((top_p < 1).any()):
            chosen = _apply_top_p(chosen, top_p)
        cumulative = chosen.softmax(dim=-1).cpu().cumsum_(dim=-1)
        uniforms = torch.cat([torch.rand(1, generator=requests[row].generator or self.generator)
                              for row in sampled_rows])
        totals = cumulative[:, -1]
        # Strictly below each row's total (a product can round up to it), so the search stays inside the row.
        targets = torch.minimum(uniforms * totals, torch.nextafter(totals, torch.zeros_like(totals))).unsqueeze(1)
        # right=True: the first token whose cumulative sum exceeds the target, so never a zero-probability one.
        tokens = torch.searchsorted(cumulative, targets, right=True).squeeze(1)
        # A row with no probability left (every logit -inf or NaN) keeps its argmax, never an id past the
        # vocabulary.
        usable = torch.isfinite(totals) & (totals > 0)
        for row, token, ok in zip(sampled_rows, tokens.tolist(), usable.tolist()):
            if ok:
                greedy[row] = token
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
    drop_sorted[:, 0] = False  # the most likely token always stays (a top_p below float32's range rounds to 0)
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
