"""What changes a batch's logits before a token is chosen, as batched tensor operations (vLLM's semantics).

Each function takes the logits of the rows that use the feature (float32, [rows, vocab]) and returns them
changed; the sampler gathers those rows, so a batch where no request uses a feature pays nothing for it.

* `apply_logit_bias`: OpenAI's logit_bias, added to the named tokens' logits.
* `apply_penalties`: vLLM's `apply_penalties`: repetition_penalty (CTRL, Keskar et al. 2019) divides a positive
  logit and multiplies a negative one for every token seen in the prompt or the output; frequency_penalty
  subtracts once per occurrence in the output, presence_penalty once if the token occurs in the output.
* `apply_min_p`: keep the tokens whose probability is at least min_p times the likeliest one's (after
  temperature, as vLLM does).
"""
from __future__ import annotations

import torch


def apply_logit_bias(logits: torch.Tensor, biases: list[dict[int, float]]) -> torch.Tensor:
    rows, tokens, values = [], [], []
    for row, bias in enumerate(biases):
        rows.extend([row] * len(bias))
        tokens.extend(bias.keys())
        values.extend(bias.values())
    device = logits.device  # the lists are the host's; the logits may be on a GPU
    index = (torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True),
             torch.tensor(tokens, dtype=torch.long).to(device, non_blocking=True))
    return logits.index_put_(index, torch.tensor(values, dtype=logits.dtype).to(device, non_blocking=True),
                             accumulate=True)


def token_counts(token_lists: list[list[int]], vocab_size: int) -> torch.Tensor:
    """[rows, vocab] occurrence counts of each row's tokens (rows padded with an id past the vocabulary)."""
    longest = max((len(ids) for ids in token_lists), default=0)
    padded = torch.full((len(token_lists), longest + 1), vocab_size, dtype=torch.long)
    for row, ids in enumerate(token_lists):
        if ids:
            padded[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=torch.float32)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, prompt_ids: list[list[int]], output_ids: list[list[int]],
                    presence: torch.Tensor, frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    vocab, device = logits.shape[-1], logits.device  # counted on the host, applied where the logits are
    output_counts = token_counts(output_ids, vocab).to(device, non_blocking=True)
    output_seen = output_counts > 0
    seen = (token_counts(prompt_ids, vocab).to(device, non_blocking=True) > 0) | output_seen
    presence, frequency, repetition = (p.to(device, non_blocking=True) for p in (presence, frequency, repetition))
    penalty = torch.where(seen, repetition.unsqueeze(1), torch.ones_like(logits))
    logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    logits -= frequency.unsqueeze(1) * output_counts
    logits -= presence.unsqueeze(1) * output_seen
    return logits


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))
