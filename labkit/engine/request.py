"""One request's state as it moves through the engine: waiting → running (→ preempted → waiting) → finished.

The status is an ordered enum, so "is it finished?" is a comparison and no flag can disagree with it.
"""
from __future__ import annotations

import enum
import time

import torch

from .outputs import RequestMetrics
from .sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # lost its KV pages; waits to be recomputed from its tokens
    FINISHED_STOPPED = 3  # EOS, a stop token id or a stop string
    FINISHED_LENGTH = 4  # max_tokens, or the context is full
    FINISHED_ABORTED = 5  # cancelled by the caller
    FINISHED_ERROR = 6  # its own processing failed (sampling, detokenizing): it alone ends, the batch goes on

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length",
                   RequestStatus.FINISHED_ABORTED: "abort", RequestStatus.FINISHED_ERROR: "error"}


class Request:
    """A prompt, its sampling parameters, the tokens produced so far and the times things happened."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                 prompt: object = None, eos_token_ids: frozenset[int] = frozenset(), max_model_len: int,
                 arrival_time: float | None = None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.status = RequestStatus.WAITING
        self.token_ids = list(prompt_token_ids)  # prompt + output: what a recompute after preemption replays
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0  # tokens whose keys and values are in the KV cache
        self.num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache when first scheduled
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None
        self.error: str | None = None  # why it ended with FINISHED_ERROR
        # The limit on output tokens: max_tokens, or whatever the context leaves.
        room = max_model_len - len(prompt_token_ids)
        self.max_output_tokens = min(params.max_tokens or room, room)
        stops_on_eos = () if params.ignore_eos else eos_token_ids
        self.stop_token_ids = frozenset(stops_on_eos) | frozenset(params.stop_token_ids)
        # Ids masked out while fewer than min_tokens exist (EOS even when ignored, like HF's min_new_tokens).
        self.min_tokens_masked_ids = sorted(frozenset(eos_token_ids) | frozenset(params.stop_token_ids))
        # The sampler's fast path: argmax with nothing to change in the logits and nothing more to compute.
        self.plain_greedy = params.greedy and not (params.has_penalties or params.logit_bias) \
            and params.logprobs is None and params.structured_outputs is None
        self.grammar = None  # its structured output's matcher (the engine compiles it on entry)
        self.logprobs: list | None = [] if params.logprobs is not None else None  # one entry per output token
        self.cumulative_logprob: float | None = 0.0 if params.logprobs is not None else None
        # The first prompt token has no log-probability (nothing precedes it): None, as vLLM and OpenAI give.
        self.prompt_logprobs: list | None = [None] if params.prompt_logprobs is not None else None
        self.generator = None
        if params.seed is not None and not params.greedy:
            self.generator = torch.Generator().manual_seed(params.seed)
        self.arrival_time = time.perf_counter() if arrival_time is None else arrival_time
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.finished_time: float | None = None
        self.inter_token_latencies: list[float] = []

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status.name}, prompt={len(self.prompt_token_ids)}, "
                f"output={len(self.output_token_ids)}, computed={self.num_computed_tokens})")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def needs_prompt_logits(self) -> bool:
        """It asked for prompt log-probabilities and some are still to come: the runner keeps every position's
        logits of its prefill (and the scheduler gives it no prefix-cache hit, as vLLM does)."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < len(self.prompt_token_ids)

    def record_logprobs(self, entry: dict) -> None:
        """The sampled token's log-probabilities (its own entry comes first in `entry`)."""
        self.logprobs.append(entry)
        self.cumulative_logprob += next(iter(entry.values())).logprob

    @property
    def needs_min_tokens_mask(self) -> bool:
        return len(self.output_token_ids) < self.params.min_tokens and bool(self.min_tokens_masked_ids)

    def append_token(self, token_id: int, now: float) -> None:
        """Record a sampled token, then end the request if that token says so (stop strings are text: the
        output processor finds them)."""
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = now
        else:
            self.inter_token_latencies.append(now - self.last_token_time)
        self.last_token_time = now
        if self.grammar is not None and token_id not in self.stop_token_ids and not self.grammar.accept(token_id):
            raise ValueError(f"the grammar refused token {token_id}: {self.grammar.error}")
        if token_id in self.stop_token_ids and len(self.output_token_ids) >= self.params.min_tokens:
            self.stop_reason = token_id
            self.status = RequestStatus.FINISHED_STOPPED
        elif len(self.output_token_ids) >= self.max_output_tokens:
            self.status = RequestStatus.FINISHED_LENGTH
        elif self.grammar is not None and self.grammar.is_terminated():
            # The output is complete: only EOS could follow, so end here (also under ignore_eos or min_tokens).
            self.status = RequestStatus.FINISHED_STOPPED

    def finish(self, status: RequestStatus, now: float) -> None:
        self.status = status
        self.finished_time = now

    def metrics(self) -> RequestMetrics:
        end = self.finished_time or self.last_token_time or self.arrival_time
        return RequestMetrics(
            arrival_time=self.arrival_time,
            queue_time_s=(self.first_scheduled_time or end) - self.arrival_time,
            ttft_s=None if self.first_token_time is None else self.first_token_time - self.arrival_time,
            inter_token_latencies_s=list(self.inter_token_latencies),
            e2e_latency_s=end - self.arrival_time,
            num_prompt_tokens=self.num_prompt_tokens,
            num_output_tokens=self.num_output_tokens,
            num_preemptions=self.num_preemptions,
        )
