"""The engine loop: `step()` is schedule → execute → sample → update → outputs.

It knows nothing of threads or HTTP: `LLM` (scripts, notebooks) and `AsyncLLM` (the server) wrap it. What
watches the loop runs after each step as a hook (`after_step`): the step log (which requests ran, how many
tokens each, how many came from the prefix cache) so the batching can be seen, the CPU thread governor, and,
when someone subscribed to its `bus`, the monitor's events with each finished request's timings.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..errors import UnsupportedModel
from ..monitor.events import EventBus, QueueDepth, RequestFinished, StepStats
from .block_manager import BlockManager
from .model_runner import ModelRunner
from .output_processor import OutputProcessor
from .outputs import RequestOutput
from .request import Request
from .sampler import Sampler
from .structured_output import StructuredOutputManager
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerOutput
from .threads import ThreadGovernor

log = logging.getLogger("labkit.engine")


@dataclass(frozen=True)
class StepRecord:
    """One engine step: when it ran and which requests it advanced by how many tokens."""

    index: int
    started: float  # time.perf_counter()
    duration_s: float
    requests: tuple[tuple[str, int], ...]  # (request_id, tokens computed): 1 for a decode, more for a prefill chunk
    num_preempted: int = 0
    cached: tuple[tuple[str, int], ...] = ()  # (request_id, prompt tokens taken from the prefix cache) on entry

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.requests)


@dataclass(frozen=True)
class StepResult:
    """What an after-step hook is given."""

    plan: SchedulerOutput
    outputs: list[RequestOutput]
    started: float
    duration_s: float


class LLMEngine:
    """Continuous batching over one Hugging Face decoder: requests join and leave between steps."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, bus: EventBus | None = None):
        reason = getattr(model, "unservable_reason", None)  # e.g. an ONNX Runtime session: no torch forward
        if reason:
            raise UnsupportedModel(reason)
        self.config = config or EngineConfig()
        self.bus = bus if bus is not None else EventBus()  # monitoring subscribes here; unobserved it costs nothing
        self.model = model
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model, self.config)
        self.scheduler = Scheduler(self.config, BlockManager(self.runner.cache.num_pages, self.config.page_size,
                                                             self.config.enable_prefix_caching))
        kernels = self.runner.lean is not None and self.runner.lean.kernels  # the sampler's argmax and draws too
        self.sampler = Sampler(self.config.seed, tokenizer, kernels=kernels)
        self.outputs = OutputProcessor(tokenizer)
        self.max_model_len = self._max_model_len(model.config)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        # The last `step_log_size` steps (a server steps forever: the log is a window, not a history).
        self.steps: deque[StepRecord] = deque(maxlen=self.config.step_log_size)
        self.num_steps = 0
        self._ids = itertools.count()
        self._grammar_lock = threading.Lock()
        on_cpu = self.runner.device.type == "cpu"
        self.cpu_threads = (self.config.cpu_threads or torch.get_num_threads()) if on_cpu else None
        self._stepping_thread: int | None = None  # the thread whose torch thread count is set (see step())
        self.threads = ThreadGovernor(max_threads=self.cpu_threads) if self.config.adapt_threads and on_cpu else None
        self.after_step: list[Callable[[StepResult], None]] = [self._log_step, self._publish_step]
        if self.threads is not None:
            self.after_step.append(lambda r: self.threads.after_step(r.duration_s, r.started + r.duration_s))

    def _max_model_len(self, model_config) -> int:
        limits = [self.runner.cache.capacity_tokens]
        for name in ("max_position_embeddings", "n_positions"):
            if isinstance(getattr(model_config, name, None), int):
                limits.append(getattr(model_config, name))
                break
        # The paged attention attends to the whole context; beyond a sliding window it would differ from the model.
        window = getattr(model_config, "sliding_window", None)
        if isinstance(window, int) and getattr(model_config, "use_sliding_window", True):
            limits.append(window)
        if self.config.max_model_len:
            limits.append(self.config.max_model_len)
        return min(limits)

    # ---- requests in ----
    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        """Raise ValueError (one sentence) for a prompt the engine cannot run."""
        count = len(prompt_token_ids)
        if count == 0:
            raise ValueError("The prompt is empty: it needs at least one token.")
        if count >= self.max_model_len:
            raise ValueError(f"The prompt has {count} tokens but this engine's context is {self.max_model_len} "
                             f"tokens, which leaves no room to generate; shorten it or raise max_model_len.")
        if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= self.vocab_size:
            raise ValueError(f"Token ids must lie in [0, {self.vocab_size}) for this model.")

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams | None = None, *,
                    request_id: str | None = None, prompt: object = None, arrival_time: float | None = None,
                    stream_text: bool = False) -> Request:
        """Queue a request. `stream_text`: its outputs carry the text so far at every step (else only the
        finished output has text)."""
        self.validate_prompt(prompt_token_ids)
        params = params or SamplingParams()
        if any(t >= self.vocab_size for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must lie in [0, {self.vocab_size}) for this model.")
        if params.logit_bias and max(params.logit_bias) >= self.vocab_size:
            raise ValueError(f"logit_bias keys must be token ids in [0, {self.vocab_size}) for this model.")
        # A constraint that does not compile raises StructuredOutputError (a ValueError naming it) here.
        grammar = None if params.structured_outputs is None else \
            self.structured_output_manager().compile(params.structured_outputs)
        if params.n != 1:
            raise ValueError("An engine request is one completion (n = 1): LLM.generate and the server fan n > 1 "
                             "out into siblings (SamplingParams.child).")
        request = Request(request_id or f"req-{next(self._ids)}", prompt_token_ids, params,
                          prompt=prompt, eos_token_ids=self.eos_token_ids, max_model_len=self.max_model_len,
                          arrival_time=arrival_time)
        request.grammar = grammar
        self.outputs.add(request, stream_text)
        self.scheduler.add(request)
        return request

    def structured_output_manager(self) -> StructuredOutputManager:
        """The grammar compiler and its cache, made on the first request with a grammar (about 0.5 s: it
        indexes the tokenizer's vocabulary). Its width is the logits' (an LM head may be wider than the
        tokenizer)."""
        with self._grammar_lock:
            if self.sampler.structured_outputs is None:
                head = self.model.get_output_embeddings()
                width = head.weight.shape[0] if head is not None else self.vocab_size
                self.sampler.structured_outputs = StructuredOutputManager(self.tokenizer, width)
            return self.sampler.structured_outputs

    def abort(self, request_id: str) -> RequestOutput | None:
        """Cancel a request; its KV pages are free when this returns. None if it is unknown or already done."""
        request = self.scheduler.abort(request_id)
        if request is None:
            return None
        output = self.outputs.output(request, [])
        if self.bus.has_subscribers:
            self._publish_finished(output)
            self.bus.publish(QueueDepth("engine", running=self.num_running, waiting=self.num_waiting,
                                        kv_usage=self.scheduler.blocks.usage))
        return output

    # ---- the loop ----
    def step(self) -> list[RequestOutput]:
        """Schedule → execute → sample → update → outputs: an output for each request that moved."""
        started = time.perf_counter()
        self._own_threads()
        plan = self.scheduler.schedule()
        if not plan:
            return self._nothing_scheduled()
        # A forward pass that raises is the engine's failure, not one request's (prompts were validated on
        # entry): it propagates. What is per request (sampling, text) fails that request alone.
        logits, samplers = self.runner.execute(plan)
        requests = [self.scheduler.requests[s.request_id] for s in samplers]
        tokens, logprobs = self._sample(logits, requests)
        if self.runner.prompt_logits:
            self._record_prompt_logprobs(plan)
        changed = self.scheduler.update(plan, {s.request_id: t for s, t in zip(samplers, tokens)})
        if logprobs is not None:  # some request asked: each such row gets its entry once its token is in
            for request, token, entry in zip(requests, tokens, logprobs):
                if entry is not None and not isinstance(token, Exception):
                    request.record_logprobs(entry)
        outputs = self.outputs.process(changed, self.scheduler.stop_at_string, self.scheduler.fail)
        result = StepResult(plan, outputs, started, time.perf_counter() - started)
        for hook in self.after_step:
            hook(result)
        return outputs

    def _nothing_scheduled(self) -> list[RequestOutput]:
        if self.scheduler.has_unfinished():  # cannot happen while max_model_len fits the cache; never spin
            raise RuntimeError(f"The scheduler could not run any of {self.num_waiting} waiting requests.")
        return []

    def _own_threads(self) -> None:
        """torch's thread count is per calling thread: the first step from a new thread (AsyncLLM's) sets it.
        A server keeps its main thread at one torch thread, so the process never has more OpenMP threads than
        cores: with more, libgomp spins only ~1,000 rounds between ops instead of GOMP_SPINCOUNT, and every op
        of a step waits for sleeping threads to wake (labkit serve made 0.55-0.75x the tokens/s it does now)."""
        if not self.cpu_threads or self._stepping_thread == threading.get_ident():
            return
        self._stepping_thread = threading.get_ident()
        torch.set_num_threads(self.threads.threads if self.threads is not None else self.cpu_threads)

    def _sample(self, logits, requests: list[Request]) -> tuple[list[int | Exception], list | None]:
        """The batch's next tokens (and log-probabilities, for the rows that ask); if sampling the batch
        fails, each row is sampled alone, so a request whose own parameters break the sampler gets its
        exception and the others their tokens."""
        try:
            out = self.sampler.sample(logits, requests)
            return out.token_ids, out.logprobs
        except Exception:
            tokens: list[int | Exception] = []
            logprobs: list = []
            for row, request in enumerate(requests):
                try:
                    out = self.sampler.sample(logits[row:row + 1], [request])
                    tokens.append(out.token_ids[0])
                    logprobs.append(out.logprobs[0] if out.logprobs else None)
                except Exception as error:
                    log.warning("request %s failed in the sampler: %r", request.request_id, error)
                    tokens.append(error)
                    logprobs.append(None)
            return tokens, logprobs

    def _record_prompt_logprobs(self, plan: SchedulerOutput) -> None:
        """Position p's logits give token p + 1's log-probability: recorded for the prompt tokens not yet
        recorded (a recompute after preemption computes them again; they are not recorded twice)."""
        for item in plan.scheduled:
            logits = self.runner.prompt_logits.get(item.request_id)
            request = self.scheduler.requests.get(item.request_id)
            if logits is None or request is None:
                continue
            done, prompt = len(request.prompt_logprobs), request.prompt_token_ids
            rows = [p - item.start for p in range(item.start, item.start + item.num_tokens)
                    if p + 1 < len(prompt) and p + 1 >= done]
            if rows:
                targets = [prompt[item.start + row + 1] for row in rows]
                request.prompt_logprobs.extend(self.sampler.logprobs.positions(
                    logits[rows], targets, [request.params.prompt_logprobs] * len(rows)))

    # ---- after-step hooks ----
    def _log_step(self, result: StepResult) -> None:
        plan = result.plan
        self.steps.append(StepRecord(self.num_steps, result.started, result.duration_s,
                                     tuple((s.request_id, s.num_tokens) for s in plan.scheduled),
                                     len(plan.preempted),
                                     tuple((s.request_id, s.num_cached_tokens) for s in plan.scheduled
                                           if s.num_cached_tokens)))
        self.num_steps += 1

    def _publish_step(self, result: StepResult) -> None:
        if not self.bus.has_subscribers:  # unobserved, monitoring costs nothing
            return
        for output in result.outputs:
            if output.finished:
                self._publish_finished(output)
        plan = result.plan
        decodes = sum(s.is_decode for s in plan.scheduled)
        self.bus.publish(StepStats("engine", batch_size=len(plan.scheduled), prefill_tokens=plan.num_tokens - decodes,
                                   decode_tokens=decodes, duration_s=result.duration_s, running=self.num_running,
                                   waiting=self.num_waiting, kv_usage=self.scheduler.blocks.usage,
                                   output_tokens=sum(len(o.new_token_ids) for o in result.outputs)))

    def _publish_finished(self, output: RequestOutput) -> None:
        m = output.metrics
        self.bus.publish(RequestFinished("engine", finish_reason=output.finish_reason or "abort",
                                         prompt_tokens=m.num_prompt_tokens, output_tokens=m.num_output_tokens,
                                         queue_s=m.queue_time_s, ttft_s=m.ttft_s, e2e_s=m.e2e_latency_s,
                                         itl_s=tuple(m.inter_token_latencies_s), cached_tokens=output.num_cached_tokens))

    def reset_prefix_cache(self) -> None:
        """Forget the cached pages no request holds (benchmarks start cold this way)."""
        self.scheduler.blocks.reset_prefix_cache()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def stats(self) -> dict:
        """Queue lengths, preemptions and KV cache use (pages held, how full they are, bytes reserved); on a GPU,
        the CUDA graphs captured, their capture time and replays."""
        threads = {} if self.threads is None else {"cpu_threads": self.threads.threads,
                                                    "cpu_thread_changes": self.threads.changes}
        graphs = self.runner.graphs.stats() if self.runner.graphs is not None else {}
        return {**self.scheduler.stats(), **self.runner.cache.stats(), "max_model_len": self.max_model_len,
                "num_steps": self.num_steps, **threads, **graphs}

    def close(self) -> None:
        """Abort what is left, give the model back its own attention and the process its thread count."""
        for request in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.abort(request.request_id)
        self.runner.close()
        if self.threads is not None:
            self.threads.close()


def _eos_token_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (generation_eos, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
