"""Log-probabilities for the requests that ask (vLLM's `logprobs` and `prompt_logprobs`), from the model's raw
logits: log_softmax before penalties, bias or temperature (vLLM's default `raw_logprobs`), so they are the
model's own numbers, what lm-eval-harness sums for a log-likelihood.

Each position gives {token id: Logprob}: the chosen token (sampled, or the prompt's next token) first, then the
`k` likeliest, each with its rank (1 is the likeliest) and its text.
"""
from __future__ import annotations

import functools

import torch

from .outputs import Logprob, PositionLogprobs


class LogprobsComputer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # One decode per distinct token id, not per candidate per position (21 candidates a token at most).
        self.token_text = functools.lru_cache(maxsize=1 << 16)(self._decode)

    def _decode(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def positions(self, logits: torch.Tensor, chosen: list[int], top: list[int]) -> list[PositionLogprobs]:
        """For each row of `logits` ([rows, vocab]): the chosen token's entry and row i's `top[i]` best ones."""
        logprobs = logits.float().log_softmax(dim=-1)
        chosen_ids = torch.tensor(chosen, dtype=torch.long).unsqueeze(1).to(logits.device, non_blocking=True)
        chosen_lp = logprobs.gather(1, chosen_ids)
        # rank: 1 + how many tokens are strictly likelier (vLLM's batched_count_greater_than)
        ranks = (logprobs > chosen_lp).sum(dim=-1).add_(1).tolist()
        chosen_lp = chosen_lp.squeeze(1).tolist()
        most = max(top, default=0)
        top_lp, top_ids = logprobs.topk(most, dim=-1) if most else (None, None)
        top_lp = top_lp.tolist() if most else None
        top_ids = top_ids.tolist() if most else None
        out = []
        for row, token in enumerate(chosen):
            entry = {token: Logprob(chosen_lp[row], ranks[row], self.token_text(token))}
            for rank in range(top[row]):
                candidate = top_ids[row][rank]
                if candidate not in entry:
                    entry[candidate] = Logprob(top_lp[row][rank], rank + 1, self.token_text(candidate))
            out.append(entry)
        return out
