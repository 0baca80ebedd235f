"""What a request asks of the sampler and when it should end. A frozen value, checked once on creation."""
from __future__ import annotations

import math
from dataclasses import dataclass

INT64_MAX = 2**63 - 1  # counts and ids reach int64 tensors: anything larger cannot be represented


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    temperature 0 is greedy (and deterministic). With a seed, sampling is reproducible whatever else runs in
    the same batch: each seeded request draws from its own random generator.
    """

    temperature: float = 1.0
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    max_tokens: int | None = 16  # None: until EOS, a stop, or the context is full
    min_tokens: int = 0  # EOS and stop token ids are masked until this many tokens exist
    stop: tuple[str, ...] = ()  # the text ends before the first of these; the tokens end with the one that completed it
    stop_token_ids: tuple[int, ...] = ()  # extra token ids that end the request (kept in token_ids, like EOS)
    ignore_eos: bool = False  # keep going past EOS (benchmarks fix output lengths this way)
    seed: int | None = None
    skip_special_tokens: bool = True  # in the decoded text

    def __post_init__(self) -> None:
        # Accept a lone string or any iterable for the tuple fields, so callers can pass lists.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.top_k == -1:  # vLLM's spelling of "off"
            object.__setattr__(self, "top_k", 0)
        if not (0 <= self.temperature and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number, at least 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}.")
        if not 0 <= self.top_k <= INT64_MAX:
            raise ValueError(f"top_k must be 0 or -1 (off) or a positive count up to 2**63-1, got {self.top_k}.")
        if self.max_tokens is not None and not 1 <= self.max_tokens <= INT64_MAX:
            raise ValueError(f"max_tokens must lie in [1, 2**63-1], got {self.max_tokens}.")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens) \
                or self.min_tokens > INT64_MAX:
            raise ValueError(f"min_tokens must lie in [0, max_tokens], got {self.min_tokens}.")
        if self.seed is not None and not -2**63 <= self.seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}.")
        if any(not 0 <= t <= INT64_MAX for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be token ids (0 or more), got {list(self.stop_token_ids)}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
