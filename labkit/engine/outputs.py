"""What the engine hands back: a request's tokens and text, why it ended, and when things happened."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestMetrics:
    """Timings of one request, in seconds, all measured from its arrival (time.perf_counter clock)."""

    arrival_time: float
    queue_time_s: float  # arrival → first scheduled
    ttft_s: float | None  # arrival → first output token
    inter_token_latencies_s: list[float]  # gaps between consecutive output tokens
    e2e_latency_s: float  # arrival → finished
    num_prompt_tokens: int
    num_output_tokens: int
    num_preemptions: int = 0

    @property
    def mean_itl_s(self) -> float | None:
        return statistics.fmean(self.inter_token_latencies_s) if self.inter_token_latencies_s else None

    def as_dict(self) -> dict:
        return {"queue_time_s": self.queue_time_s, "ttft_s": self.ttft_s, "mean_itl_s": self.mean_itl_s,
                "e2e_latency_s": self.e2e_latency_s, "num_prompt_tokens": self.num_prompt_tokens,
                "num_output_tokens": self.num_output_tokens, "num_preemptions": self.num_preemptions}


@dataclass(frozen=True)
class Logprob:
    """One candidate token's log-probability at one position (vLLM's `Logprob`): log_softmax of the model's
    raw logits (before penalties, bias and temperature, vLLM's default `raw_logprobs`), and its rank there
    (1 is the likeliest)."""

    logprob: float
    rank: int
    decoded_token: str | None = None


# One position's candidates: token id -> Logprob, the sampled (or prompt) token first, then the top ones.
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    """One completion of a request (vLLM's name): a request with n > 1 has n of them."""

    index: int
    text: str | None
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[PositionLogprobs] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    """One request's result (finished=True), or a step of it while it streams (new_token_ids, text None)."""

    request_id: str
    prompt: object
    prompt_token_ids: list[int]
    token_ids: list[int]  # every output token so far (EOS or the stop token included)
    new_token_ids: list[int] = field(default_factory=list)  # the tokens this step added
    text: str | None = None  # the decoded output, cut before a stop string; set once finished
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    metrics: RequestMetrics | None = None  # set once finished
    error: str | None = None  # with finish_reason "error": what failed (this request alone)
    num_cached_tokens: int | None = None  # prompt tokens taken from the prefix cache (vLLM's name); None: never scheduled
    logprobs: list[PositionLogprobs] | None = None  # per output token, when SamplingParams.logprobs is set
    prompt_logprobs: list[PositionLogprobs | None] | None = None  # per prompt token (the first is None), if asked
    cumulative_logprob: float | None = None  # sum of the sampled tokens' log-probabilities, if logprobs were asked
    siblings: list[CompletionOutput] | None = None  # with n > 1: every completion (the fields above are the first's)

    @property
    def outputs(self) -> list[CompletionOutput]:
        """The completions, as vLLM's RequestOutput.outputs: one per sibling (one for n = 1)."""
        if self.siblings is not None:
            return self.siblings
        return [CompletionOutput(0, self.text, self.token_ids, self.cumulative_logprob, self.logprobs,
                                 self.finish_reason, self.stop_reason)]

    def __repr__(self) -> str:
        text = self.text if self.text is None or len(self.text) < 60 else self.text[:57] + "..."
        return (f"RequestOutput({self.request_id!r}, text={text!r}, tokens={len(self.token_ids)}, "
                f"finish_reason={self.finish_reason!r})")
