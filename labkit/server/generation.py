"""The LLM behind /v1/completions and /v1/chat/completions: prompts become token ids, requests are admitted
(or refused with 429), run on the async engine, detokenised as they stream, cut at stop strings, timed
out (504) and always ended: finished, errored or cancelled, with their KV memory freed."""
from __future__ import annotations

import asyncio
import itertools
import time

from ..config import ServerConfig
from ..engine.chat import chat_token_ids, max_token_chars
from ..models import LoadedModel
from .stops import StopMatcher
from .engine_bridge import EngineBridge
from .errors import APIError, bad_request, timed_out
from .limits import Admission

DEFAULT_MAX_TOKENS = 256  # when a request names none, as far as the context allows


class LLMService:
    def __init__(self, loaded: LoadedModel, config: ServerConfig, metrics, *, bus=None, **engine_options):
        if loaded.kind != "causal-lm":
            raise TypeError(f"{loaded.name} is an {loaded.kind}; text generation needs a causal LM")
        self.loaded = loaded
        self.name = loaded.name
        self.tokenizer = loaded.tokenizer
        self.config = config
        self.metrics = metrics
        self.engine = EngineBridge(loaded, bus=bus, **engine_options)  # it publishes finished requests to bus
        self.max_model_len = self.engine.max_model_len
        self.max_prompt_chars = self.max_model_len * max_token_chars(self.tokenizer)
        self.admission = Admission(self.engine.max_num_seqs, config.max_waiting, config.retry_after_s)
        self.jobs: set[GenerationJob] = set()
        self.engine_ids = itertools.count()  # suffixes that keep engine request ids unique

    # ---- prompts: checked on their raw length first, then tokenized off the event loop ----
    async def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in prompt):
                raise bad_request(f"Token ids must lie in [0, {vocab}).", param="prompt")
            return prompt
        self._check_raw_length(len(prompt), "prompt")
        ids = await asyncio.to_thread(lambda: self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if not ids:
            raise bad_request("The prompt is empty.", param="prompt")
        return ids

    async def chat_prompt_ids(self, messages) -> list[int]:
        if self.tokenizer.chat_template is None:
            raise bad_request(f"{self.name} has no chat template; use /v1/completions.", param="messages")
        conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in messages]
        self._check_raw_length(sum(len(m["content"]) for m in conversation), "messages")
        try:
            return await asyncio.to_thread(chat_token_ids, self.tokenizer, conversation)
        except ValueError as err:  # a control token's text the template cannot keep as plain text
            raise bad_request(str(err), param="messages") from None

    def _check_raw_length(self, chars: int, param: str) -> None:
        """Refuse, without tokenizing, a text that cannot fit the context whatever its tokens: no token
        stands for more than `max_token_chars` characters, so tokenizing 1 MB to count is never needed."""
        if chars > self.max_prompt_chars:
            raise bad_request(f"The {param} has {chars} characters, more than fit in this model's "
                              f"{self.max_model_len}-token context (at most {self.max_prompt_chars}).",
                              param=param, code="context_length_exceeded")

    # ---- jobs ----
    def start_job(self, prompt_ids: list[int], body, request_id: str) -> GenerationJob:
        """Validate against the context, admit (429 when full), and submit to the engine."""
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise bad_request(f"The prompt has {len(prompt_ids)} tokens; this model's context is "
                              f"{self.max_model_len} tokens, which leaves no room to generate.",
                              param="messages" if hasattr(body, "messages") else "prompt",
                              code="context_length_exceeded")
        if body.max_tokens is not None and body.max_tokens > room:
            raise bad_request(f"max_tokens is {body.max_tokens} but the {len(prompt_ids)}-token prompt leaves "
                              f"{room} of this model's {self.max_model_len}-token context.",
                              param="max_tokens", code="context_length_exceeded")
        if body.presence_penalty or body.frequency_penalty:
            raise bad_request("presence_penalty and frequency_penalty are not supported (leave them at 0).",
                              param="presence_penalty" if body.presence_penalty else "frequency_penalty",
                              code="unsupported")
        max_tokens = body.max_tokens or min(DEFAULT_MAX_TOKENS, room)
        self.admission.admit()
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        job = GenerationJob(self, request_id, prompt_ids, max_tokens, body, [s for s in stops if s])
        self.jobs.add(job)
        return job

    # ---- engine state, for /metrics and /health ----
    def num_running(self) -> int:
        return self.engine.num_running()

    def num_waiting(self) -> int:
        return self.engine.num_waiting()

    def kv_usage(self) -> float:
        return self.engine.kv_usage()

    def problem(self) -> str | None:
        return self.engine.problem()

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self, grace_s: float) -> None:
        await self.drain(grace_s)
        await self.engine.stop()

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests (503), let running ones finish for `grace_s`, then cancel the rest."""
        self.admission.accepting = False
        deadline = time.monotonic() + grace_s
        while self.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self.jobs):
            job.cancel("The server is shutting down; the request was cancelled.")


class GenerationJob:
    """One request on the engine. `stream()` yields text deltas; `close()` ends it for good (idempotent)."""

    def __init__(self, service: LLMService, request_id: str, prompt_ids: list[int], max_tokens: int, body,
                 stops: list[str]):
        self.service = service
        self.id = request_id
        # The engine's id is unique even when a client reuses its X-Request-Id for concurrent requests.
        self.engine_id = f"{request_id}#{next(service.engine_ids)}"
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.finish_reason: str | None = None
        self.ttft_s: float | None = None
        self.started = time.perf_counter()
        self.deadline = asyncio.get_running_loop().time() + service.config.request_timeout_s
        self._stops = StopMatcher(stops)
        self._seen = ""  # engine text fed to the stop matcher so far
        self._emitted = ""  # text handed to the client so far
        self._stop_seen = False
        self._cancel_reason: str | None = None
        self._closed = False
        self._engine_done = False
        self._outputs = service.engine.submit(self.engine_id, prompt_ids, max_tokens=max_tokens,
                                              temperature=body.temperature, top_p=body.top_p,
                                              top_k=body.top_k or 0, seed=body.seed, stop=tuple(stops),
                                              ignore_eos=body.ignore_eos, min_tokens=min(body.min_tokens, max_tokens))

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    def _emit(self, text: str) -> str:
        self._emitted += text
        return text

    async def stream(self):
        """Text deltas as the engine produces tokens; raises APIError on timeout or cancel."""
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    step = await anext(self._outputs)
            except StopAsyncIteration:
                break
            except TimeoutError:  # leaving the engine's stream mid-way aborted the request, KV freed
                self.finish_reason = "timeout"
                raise timed_out(self.service.config.request_timeout_s) from None
            except ValueError as err:  # the engine refused the prompt (a check the server did not make)
                self.finish_reason = "error"
                raise bad_request(str(err), param="prompt") from err
            except RuntimeError as err:  # the engine thread died: /health says so; this request gets a 500
                self.finish_reason = "error"
                raise APIError(500, f"The engine failed: {err.__cause__ or err}", code="engine_error") from err
            if step.new_token_ids:
                self.ttft_s = self.ttft_s if self.ttft_s is not None else time.perf_counter() - self.started
                self.completion_tokens += len(step.new_token_ids)
            if step.finished:
                self._engine_done = True
                self.finish_reason = step.finish_reason
                self.cached_tokens = step.num_cached_tokens
                if self._cancel_reason is not None:
                    raise APIError(503, self._cancel_reason, code="cancelled")
                if step.finish_reason == "error":  # this request alone failed in the engine; the others go on
                    raise APIError(500, f"The engine could not process this request: {step.error}",
                                   code="request_failed")
                # The engine's final text is authoritative (cut before a stop string).
                tail = step.text[len(self._emitted):] if step.text.startswith(self._emitted) else ""
                yield self._emit(tail)
                return
            if self._stop_seen:  # nothing more streams after a stop string; the final step follows
                continue
            delta = step.text[len(self._seen):] if step.text.startswith(self._seen) else ""
            self._seen = step.text
            text, self._stop_seen = self._stops.feed(delta)
            if text:
                yield self._emit(text)
        if self._cancel_reason is not None:
            raise APIError(503, self._cancel_reason, code="cancelled")

    def cancel(self, reason: str) -> None:
        """Stop the request from outside (shutdown): the engine frees its KV pages at once."""
        if not self._engine_done:
            self._cancel_reason = reason
            self.service.engine.abort(self.engine_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._outputs.aclose()  # a stream left early aborts its request: KV pages freed
        except RuntimeError:  # still being iterated by a task that is being cancelled
            await self.service.engine.abort_async(self.engine_id)
        if not self._engine_done:
            self.finish_reason = self.finish_reason or "abort"
        self.service.admission.release()
        self.service.jobs.discard(self)
