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

    def __repr__(self) -> str:
        text = self.text if self.text is None or len(self.text) < 60 else self.text[:57] + "..."
        return (f"RequestOutput({self.request_id!r}, text={text!r}, tokens={len(self.token_ids)}, "
                f"finish_reason={self.finish_reason!r})")
