"""Which requests run in the next step, and how many tokens each: the `schedule()` / `update()` contract.

Policy, in order of priority:
1. Running requests first, oldest first: each gets one token if decoding, or the next chunk of its prompt
   if still prefilling. Decodes come before any new prefill, so a long prompt cannot stall them.
2. Then waiting requests, first come first served, while there is token budget, a free running seat
   (max_num_seqs) and KV pages for their first chunk. A prompt longer than what is left of the budget is
   prefilled in chunks over several steps (chunked prefill).
3. A running request that needs a page when none is free takes it from the newest running request, which is
   preempted: its pages are freed and it goes back to the front of the queue, to be recomputed from its
   prompt and the tokens it already produced (recompute-style preemption; greedy outputs are unchanged).
4. A request entering the batch first takes the cached pages of its longest cached prefix (automatic prefix
   caching, block_manager.py): those tokens are not computed again. After each step, pages that became full
   are given keys, so the next request with the same prefix finds them.

The output is plain data for the runner, which keeps its own copy of the batch (model_runner.InputBatch):
which requests, how many tokens each, the pages each was given since the runner last saw it (all of them for
a request entering the batch), and which requests left the batch since the last step.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from ..config import EngineConfig
from .block_manager import BlockManager
from .request import Request, RequestStatus


@dataclass(frozen=True)
class ScheduledRequest:
    """One request's part of a step, as plain data: the runner needs nothing else (and no live Request)."""

    request_id: str
    start: int  # position of the first token to compute (the ones before are in the KV cache)
    token_ids: tuple[int, ...]  # the tokens to compute this step
    samples: bool  # this step reaches the request's last known token: its logits give the next one
    num_cached_tokens: int = 0  # on entry to the batch: tokens taken from the prefix cache instead
    prompt_logits: bool = False  # the runner returns every computed position's logits (prompt log-probabilities)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_decode(self) -> bool:
        """One token: attention's decode path, and what the metrics count as decode (a prefill or a recompute
        chunk after preemption computes more)."""
        return len(self.token_ids) == 1


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)  # ids of the requests preempted to make room
    new_block_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)  # pages added since the runner saw them
    departed: tuple[str, ...] = ()  # left the batch since the last step (finished, aborted, preempted)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager):
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Request] = deque()
        self.requests: dict[str, Request] = {}  # every unfinished request, by id
        self.running: list[Request] = []  # oldest first; the newest is the first to be preempted
        self.num_preemptions = 0
        self.peak_pages_used = 0  # the most KV pages held at once, for "how much of the cache did we need"
        self._pages_sent: dict[str, int] = {}  # request id -> how many of its pages the runner was told of
        self._departed: list[str] = []  # requests that let go of their pages since the last schedule()

    def add(self, request: Request) -> None:
        self.waiting.append(request)
        self.requests[request.request_id] = request

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_tokens = min(request.num_tokens - request.num_computed_tokens, budget)
            if self._make_room(request, request.num_computed_tokens + num_tokens, out):
                out.scheduled.append(_scheduled(request, num_tokens))
                budget -= num_tokens
                index += 1
            else:  # the request preempted itself: nothing newer is left running
                break
        if out.preempted:  # memory is short: admitting more now would only preempt again
            self.peak_pages_used = self.blocks.num_pages  # it was full: that is why someone was preempted
            return self._with_tables(out)
        now = time.perf_counter()
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            # Prompt log-probabilities need the prompt's logits: computed, never taken from the cache (vLLM too).
            hits = [] if request.needs_prompt_logits else self.blocks.match(request.token_ids)
            cached = len(hits) * self.blocks.page_size
            num_tokens = min(request.num_tokens - cached, budget)
            if not self.blocks.allocate(request.request_id, hits, cached + num_tokens):
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = cached
            if request.first_scheduled_time is None:  # counted once, not again after a preemption
                request.first_scheduled_time = now
                request.num_cached_tokens = cached
                self.blocks.count_lookup(request.num_prompt_tokens, cached)
            self.running.append(request)
            out.scheduled.append(_scheduled(request, num_tokens, cached))
            budget -= num_tokens
        self.peak_pages_used = max(self.peak_pages_used, self.blocks.num_used_pages)
        return self._with_tables(out)

    def _with_tables(self, out: SchedulerOutput) -> SchedulerOutput:
        """Tell the runner only what changed: who left, and the pages each scheduled request gained. An empty
        plan never reaches the runner, so the departures wait for the next plan that does."""
        if out.scheduled:
            out.departed, self._departed = tuple(self._departed), []
        for item in out.scheduled:
            table = self.blocks.tables[item.request_id]
            sent = self._pages_sent.get(item.request_id, 0)
            if len(table) > sent:
                out.new_block_ids[item.request_id] = tuple(table[sent:])
                self._pages_sent[item.request_id] = len(table)
        return out

    def _let_go(self, request_id: str) -> None:
        self.blocks.free(request_id)
        if self._pages_sent.pop(request_id, None) is not None:
            self._departed.append(request_id)

    def _make_room(self, request: Request, num_tokens: int, out: SchedulerOutput) -> bool:
        """Reserve pages for `num_tokens` of `request`, preempting the newest requests until they fit.
        False if `request` itself had to be preempted."""
        while not self.blocks.reserve(request.request_id, num_tokens):
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim.request_id)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self._let_go(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def update(self, out: SchedulerOutput, sampled: dict[str, int | Exception]) -> list[tuple[Request, list[int]]]:
        """Advance every scheduled request by what the step computed; append the sampled tokens; retire
        the requests that finished. A request whose sample is an exception, or whose token cannot be
        processed, ends with FINISHED_ERROR alone. Returns (request, new token ids) for each request that moved."""
        now = time.perf_counter()
        changed = []
        for item in out.scheduled:
            request = self.requests[item.request_id]
            request.num_computed_tokens += item.num_tokens
            self.blocks.cache_computed(request.request_id, request.token_ids, request.num_computed_tokens)
            token = sampled.get(request.request_id)
            if token is None:
                continue
            if isinstance(token, Exception):
                self.fail(request, token, now)
                changed.append((request, []))
                continue
            try:
                request.append_token(token, now)  # may finish it: EOS, stop, max_tokens or a full context
            except Exception as error:  # this request's problem, not the batch's
                self.fail(request, error, now)
                changed.append((request, []))
                continue
            if request.status.is_finished:
                self._retire(request, request.status, now)
            changed.append((request, [token]))
        return changed

    def stop_at_string(self, request: Request, stop: str) -> None:
        """The output processor found a stop string in the request's text: it ends with reason "stop" (even
        if the same token had also reached max_tokens)."""
        request.stop_reason = stop
        if request.status.is_finished:
            request.status = RequestStatus.FINISHED_STOPPED
        else:
            self._retire(request, RequestStatus.FINISHED_STOPPED, time.perf_counter())

    def fail(self, request: Request, error: BaseException, now: float | None = None) -> None:
        """End one request with FINISHED_ERROR and free its pages; the others are untouched."""
        request.error = f"{type(error).__name__}: {error}"
        if request.status.is_finished:  # its last token was in: it is retired already, only the reason changes
            request.status = RequestStatus.FINISHED_ERROR
        else:
            self._retire(request, RequestStatus.FINISHED_ERROR, time.perf_counter() if now is None else now)

    def abort(self, request_id: str) -> Request | None:
        """Take a request out wherever it is, and free its pages now."""
        for queue in (self.running, self.waiting):
            for request in queue:
                if request.request_id == request_id:
                    self._retire(request, RequestStatus.FINISHED_ABORTED, time.perf_counter())
                    return request
        return None

    def _retire(self, request: Request, status: RequestStatus, now: float) -> None:
        request.finish(status, now)
        self.requests.pop(request.request_id, None)
        self._let_go(request.request_id)
        if request in self.running:
            self.running.remove(request)
        else:
            self.waiting.remove(request)

    def stats(self) -> dict:
        return {"num_running": len(self.running), "num_waiting": len(self.waiting),
                "num_preemptions": self.num_preemptions,
                "kv_peak_usage": self.peak_pages_used / self.blocks.num_pages, **self.blocks.stats()}


def _scheduled(request: Request, num_tokens: int, num_cached_tokens: int = 0) -> ScheduledRequest:
    start = request.num_computed_tokens
    return ScheduledRequest(request.request_id, start, tuple(request.token_ids[start:start + num_tokens]),
                            start + num_tokens == request.num_tokens, num_cached_tokens,
                            request.needs_prompt_logits)
