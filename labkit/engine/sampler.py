"""Next tokens from logits, for a whole batch at once.

All-greedy batches with nothing to change in the logits (the common case for benchmarks and tests) take one
argmax and nothing else. Otherwise, in vLLM's order:
1. `constrain`: the tokens a request may not emit yet are masked (EOS before min_tokens). This is the one
   place where a per-request logits processor or a structured-output token bitmask applies, before anything
   reads the logits to choose.
2. logit_bias, then the presence/frequency/repetition penalties (logits_processors.py), on the rows that ask;
3. greedy rows take the argmax of the result; the others divide by their temperature, apply min_p, top-k and
   top-p and draw by inverse CDF (top_k_top_p.py: exact, from each row's likeliest tokens, without sorting
   the vocabulary): one uniform number per row, the first token whose cumulative probability passes it. The
   uniform comes from the request's own generator when it has a seed, so a seeded request gets the same
   tokens whatever else shares its batch. (The exponential race, argmax of
   p / E with E ~ Exp(1), needs a random number per vocabulary entry: 0.8 ms per row for a 49K vocabulary, a
   third of a batch-32 decode step on this CPU.)
Log-probabilities (logprobs.py) come from the logits as the model gave them, for the rows that ask only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cpu_kernels
from .logits_processors import apply_logit_bias, apply_min_p, apply_penalties
from .logprobs import LogprobsComputer
from .outputs import PositionLogprobs
from .request import Request
from .top_k_top_p import draw


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[PositionLogprobs | None] | None = None  # per row; None when no request in the batch asked


class Sampler:
    def __init__(self, seed: int | None = None, tokenizer=None, kernels: bool = False):
        self.kernels = kernels  # argmax and top-k/top-p draws through engine/cpu_kernels.py
        # For requests without a seed of their own. Unseeded, it starts from OS entropy, so a restarted engine
        # does not replay the same "random" replies; an engine seed makes every unseeded draw reproducible.
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.logprobs = LogprobsComputer(tokenizer)
        self.structured_outputs = None  # the engine's StructuredOutputManager, once a request has a grammar

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> list[int]:
        return self.sample(logits, requests).token_ids

    def sample(self, logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
        if all(request.plain_greedy and not request.needs_min_tokens_mask for request in requests):
            return SamplerOutput(self._argmax(logits))
        raw = logits
        # A copy in float32 (like transformers' generate): the runner's logits stay as the model gave them,
        # for log-probabilities (and a runner's inference-mode tensor cannot be written out here anyway).
        logits = logits.float() if logits.dtype != torch.float32 else logits.clone()  # .float() of bf16 is a copy
        self.constrain(logits, requests)
        logits = self._bias_and_penalize(logits, requests)
        sampled_rows = [row for row, request in enumerate(requests) if not request.params.greedy]
        # The argmax serves greedy rows, and sampled rows left with no probability; none needed, none computed.
        tokens = self._argmax(logits) if len(sampled_rows) < len(requests) else None
        if sampled_rows:
            drawn = self._draw(logits, requests, sampled_rows)  # (divides `logits` by the temperatures: same argmax)
            if tokens is None:
                tokens = self._argmax(logits) if None in drawn else drawn
            for row, token in zip(sampled_rows, drawn):
                if token is not None:
                    tokens[row] = token
        asking = [row for row, request in enumerate(requests) if request.params.logprobs is not None]
        if not asking:
            return SamplerOutput(tokens)
        entries: list[PositionLogprobs | None] = [None] * len(requests)
        computed = self.logprobs.positions(raw[asking], [tokens[row] for row in asking],
                                           [requests[row].params.logprobs for row in asking])
        for row, entry in zip(asking, computed):
            entries[row] = entry
        return SamplerOutput(tokens, entries)

    def constrain(self, logits: torch.Tensor, requests: list[Request]) -> None:
        """Mask, in place, the tokens each request may not emit now. Structured outputs hook in here: a
        grammar's token bitmask for the batch is applied at this point, before bias, penalties and choice."""
        for row, request in enumerate(requests):
            if request.needs_min_tokens_mask:
                logits[row, request.min_tokens_masked_ids] = float("-inf")
        grammars = {row: request.grammar for row, request in enumerate(requests) if request.grammar is not None}
        if grammars:
            manager = self.structured_outputs
            manager.apply(logits, manager.fill_bitmask(grammars, len(requests)), list(grammars))

    @staticmethod
    def _bias_and_penalize(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        biased = [row for row, request in enumerate(requests) if request.params.logit_bias]
        if biased:
            logits[biased] = apply_logit_bias(logits[biased], [requests[row].params.logit_bias for row in biased])
        penalized = [row for row, request in enumerate(requests) if request.params.has_penalties]
        if penalized:
            params = [requests[row].params for row in penalized]
            logits[penalized] = apply_penalties(
                logits[penalized], [requests[row].prompt_token_ids for row in penalized],
                [requests[row].output_token_ids for row in penalized],
                presence=torch.tensor([p.presence_penalty for p in params]),
                frequency=torch.tensor([p.frequency_penalty for p in params]),
                repetition=torch.tensor([p.repetition_penalty for p in params]))
        return logits

    def _draw(self, logits: torch.Tensor, requests: list[Request], sampled_rows: list[int]) -> list[int | None]:
        params = [requests[row].params for row in sampled_rows]
        # Every row sampled (the usual batch): the rows in place, since nothing reads `logits` after the draw.
        chosen = logits if len(sampled_rows) == logits.shape[0] else logits[sampled_rows]
        # Built on the host and copied without waiting (a GPU's queue is not drained for them), and min_p's test
        # is on the parameters, not on a device tensor whose answer would have to come back.
        temperatures = torch.tensor([p.temperature for p in params]).to(logits.device, non_blocking=True)
        chosen.div_(temperatures.unsqueeze(1))
        if any(p.min_p > 0 for p in params):
            chosen = apply_min_p(chosen, torch.tensor([p.min_p for p in params]).to(logits.device, non_blocking=True))
        vocab = logits.shape[-1]  # a top_k past the vocabulary keeps all of it
        top_k = torch.tensor([min(p.top_k, vocab) for p in params])
        top_p = torch.tensor([p.top_p for p in params])
        uniforms = torch.cat([torch.rand(1, generator=requests[row].generator or self.generator)
                              for row in sampled_rows])
        on_cpu = chosen.device.type == "cpu"
        tokens, usable = draw(chosen.cpu(), top_k, top_p, uniforms, kernels=self.kernels and on_cpu)
        # A row with no probability left (every logit -inf or NaN) keeps its argmax, never an id past the
        # vocabulary.
        return [token if ok else None for token, ok in zip(tokens.tolist(), usable.tolist())]

    def _argmax(self, logits: torch.Tensor) -> list[int]:
        if self.kernels and logits.device.type == "cpu" and logits.dtype in (torch.bfloat16, torch.float32):
            return cpu_kernels.argmax(logits).tolist()
        return _argmax(logits)


def _argmax(logits: torch.Tensor) -> list[int]:
    """Each row's first largest entry. `max(dim).indices` is argmax's result (the first maximum, NaN counted as
    largest) at a quarter of its time on bfloat16 rows: 0.8 against 3.5 ms for 32 rows of 49K on this CPU."""
    return logits.max(dim=-1).indices.tolist()
