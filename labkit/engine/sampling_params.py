"""What a request asks of the sampler and when it should end. A frozen value, checked once on creation.

Field names and semantics are vLLM's (`n`, `presence_penalty`, `frequency_penalty`, `repetition_penalty`,
`logit_bias`, `min_p`, `logprobs`, `prompt_logprobs`, `stop_token_ids`, `seed`, `structured_outputs`), so code written for vLLM's
`SamplingParams` reads the same here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .structured_output import StructuredOutputsParams

INT64_MAX = 2**63 - 1  # counts and ids reach int64 tensors: anything larger cannot be represented
INT64_MIN = -2**63
MAX_LOGPROBS = 20  # top log-probabilities per position (OpenAI's top_logprobs bound, vLLM's default max)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    temperature 0 is greedy (and deterministic). With a seed, sampling is reproducible whatever else runs in
    the same batch: each seeded request draws from its own random generator.
    """

    n: int = 1  # completions per prompt (siblings share the prompt's KV pages through the prefix cache)
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 (or -1) keeps all
    min_p: float = 0.0  # drop tokens less likely than min_p times the likeliest one
    presence_penalty: float = 0.0  # subtracted once from every token already in the output
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    repetition_penalty: float = 1.0  # >1 discourages tokens of the prompt or the output (CTRL's divide/multiply)
    logit_bias: MappingProxyType | dict | None = None  # token id -> added to its logit before sampling
    max_tokens: int | None = 16  # None: until EOS, a stop, or the context is full
    min_tokens: int = 0  # EOS and stop token ids are masked until this many tokens exist
    stop: tuple[str, ...] = ()  # the text ends before the first of these; the tokens end with the one that completed it
    stop_token_ids: tuple[int, ...] = ()  # extra token ids that end the request (kept in token_ids, like EOS)
    ignore_eos: bool = False  # keep going past EOS (benchmarks fix output lengths this way)
    seed: int | None = None  # any int64 (negative too, as vLLM and OpenAI allow)
    logprobs: int | None = None  # per output token: the sampled token's log-probability and this many top ones
    prompt_logprobs: int | None = None  # the same for every prompt token (needs the prompt's logits: no prefix cache)
    skip_special_tokens: bool = True  # in the decoded text
    structured_outputs: StructuredOutputsParams | None = None  # a grammar the output must follow (JSON, regex, ...)

    def __post_init__(self) -> None:
        # Accept a lone string or any iterable for the tuple fields, so callers can pass lists.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.top_k == -1:  # vLLM's spelling of "off"
            object.__setattr__(self, "top_k", 0)
        if self.logit_bias is not None:  # read-only, so the frozen value cannot change under the sampler
            object.__setattr__(self, "logit_bias", MappingProxyType({int(t): float(b) for t, b in self.logit_bias.items()}))
        self._check()

    def _check(self) -> None:
        if not 1 <= self.n <= INT64_MAX:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if not (0 <= self.temperature and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number, at least 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}.")
        if not 0 <= self.top_k <= INT64_MAX:
            raise ValueError(f"top_k must be 0 or -1 (off) or a positive count up to 2**63-1, got {self.top_k}.")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must lie in [0, 1], got {self.min_p}.")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must lie in [-2, 2], got {getattr(self, name)}.")
        # A factor far from 1 breaks float32 logits: 1e-137 rounds to 0, and -inf * 0 is NaN, which a grammar's
        # mask cannot hold back (found by the server's fuzzing). A hundredfold either way is plenty.
        if not 0.01 <= self.repetition_penalty <= 100:
            raise ValueError(f"repetition_penalty must lie in [0.01, 100] (1 is off), got {self.repetition_penalty}.")
        if self.logit_bias and any(not (0 <= t <= INT64_MAX and math.isfinite(b)) for t, b in self.logit_bias.items()):
            raise ValueError("logit_bias maps token ids (0 or more) to finite numbers.")
        if self.max_tokens is not None and not 1 <= self.max_tokens <= INT64_MAX:
            raise ValueError(f"max_tokens must lie in [1, 2**63-1], got {self.max_tokens}.")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens) \
                or self.min_tokens > INT64_MAX:
            raise ValueError(f"min_tokens must lie in [0, max_tokens], got {self.min_tokens}.")
        if self.seed is not None and not INT64_MIN <= self.seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}.")
        if any(not 0 <= t <= INT64_MAX for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be token ids (0 or more), got {list(self.stop_token_ids)}.")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must lie in [0, {MAX_LOGPROBS}], got {value}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def processes_logits(self) -> bool:
        """Anything that changes the logits before the argmax or the draw (besides temperature/top-k/top-p)."""
        return self.has_penalties or bool(self.logit_bias) or self.min_p > 0

    def child(self, index: int) -> SamplingParams:
        """The parameters of sibling `index` of an n > 1 request: one completion each, and with a seed, a
        seed of its own (seed + index, vLLM's rule), so siblings differ yet the whole set is reproducible."""
        from dataclasses import replace

        seed = self.seed
        if seed is not None:
            seed = seed + index if seed + index < 2**64 else seed + index - 2**64  # stays in the 64-bit range
        return replace(self, n=1, seed=seed)
