"""A generation request's life on the server, over `AsyncLLM` directly: its sampling parameters checked
against the context, admitted (or 429), streamed as text deltas, timed out (504), cancelled (client gone,
shutdown), and always ended with its KV pages freed. Text, stop strings and finish reasons come from the
engine's output processor; nothing here decodes tokens."""
from __future__ import annotations

import asyncio
import time

from ..engine import SamplingParams
from .errors import APIError, bad_request, timed_out

DEFAULT_MAX_TOKENS = 256  # when a request names none, as far as the context allows


def sampling_params(body, prompt_tokens: int, max_model_len: int) -> SamplingParams:
    """The engine's parameters for a completions or chat body, or a 400 naming the field that cannot fit."""
    room = max_model_len - prompt_tokens
    if room < 1:
        raise bad_request(f"The prompt has {prompt_tokens} tokens; this model's context is {max_model_len} tokens, "
                          f"which leaves no room to generate.", param="messages" if hasattr(body, "messages")
                          else "prompt", code="context_length_exceeded")
    if body.max_tokens is not None and body.max_tokens > room:
        raise bad_request(f"max_tokens is {body.max_tokens} but the {prompt_tokens}-token prompt leaves {room} of "
                          f"this model's {max_model_len}-token context.", param="max_tokens",
                          code="context_length_exceeded")
    if body.presence_penalty or body.frequency_penalty:
        raise bad_request("presence_penalty and frequency_penalty are not supported (leave them at 0).",
                          param="presence_penalty" if body.presence_penalty else "frequency_penalty",
                          code="unsupported")
    max_tokens = body.max_tokens or min(DEFAULT_MAX_TOKENS, room)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k or 0,
                          max_tokens=max_tokens, min_tokens=min(body.min_tokens, max_tokens), stop=tuple(stops),
                          ignore_eos=body.ignore_eos, seed=body.seed)


class GenerationJob:
    """One request on the engine. `stream()` yields text deltas; `close()` ends it for good (idempotent)."""

    def __init__(self, services, request_id: str, prompt_ids: list[int], params: SamplingParams):
        self.services = services
        self.engine = services.engine
        self.id = request_id
        # The engine's id is unique even when a client reuses its X-Request-Id for concurrent requests.
        self.engine_id = f"{request_id}#{next(services.engine_ids)}"
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.finish_reason: str | None = None
        self.ttft_s: float | None = None
        self.started = time.perf_counter()
        self.timeout_s = services.config.request_timeout_s
        self.deadline = asyncio.get_running_loop().time() + self.timeout_s
        self._shown = ""  # text handed to the client so far
        self._cancel_reason: str | None = None
        self._closed = False
        self._engine_done = False
        self._outputs = self.engine.generate(prompt_ids, params, request_id=self.engine_id)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    async def stream(self):
        """Text deltas as the engine produces them; raises APIError on timeout, cancel or this request's failure."""
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    out = await anext(self._outputs)
            except StopAsyncIteration:
                break
            except TimeoutError:  # leaving the engine's stream mid-way aborted the request, KV freed
                self.finish_reason = "timeout"
                raise timed_out(self.timeout_s) from None
            except ValueError as err:  # the engine refused the prompt (a check the server did not make)
                self.finish_reason = "error"
                raise bad_request(str(err), param="prompt") from err
            except RuntimeError as err:  # the engine thread died: /health says so; this request gets a 500
                self.finish_reason = "error"
                raise APIError(500, f"The engine failed: {err.__cause__ or err}", code="engine_error") from err
            if out.new_token_ids:
                self.ttft_s = self.ttft_s if self.ttft_s is not None else time.perf_counter() - self.started
                self.completion_tokens += len(out.new_token_ids)
            if out.finished:
                self._engine_done = True
                self.finish_reason = out.finish_reason
                self.cached_tokens = out.num_cached_tokens or 0
                if self._cancel_reason is not None:
                    raise APIError(503, self._cancel_reason, code="cancelled")
                if out.finish_reason == "error":  # this request alone failed in the engine; the others go on
                    raise APIError(500, f"The engine could not process this request: {out.error}",
                                   code="request_failed")
            text = out.text or ""
            delta, self._shown = text[len(self._shown):], text  # the engine's text only grows
            if delta:
                yield delta
            if out.finished:
                return
        if self._cancel_reason is not None:
            raise APIError(503, self._cancel_reason, code="cancelled")

    def cancel(self, reason: str) -> None:
        """Stop the request from outside (shutdown): the engine frees its KV pages at once."""
        if not self._engine_done:
            self._cancel_reason = reason
            self.engine.abort(self.engine_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._outputs.aclose()  # a stream left early aborts its request: KV pages freed
        except RuntimeError:  # still being iterated by a task that is being cancelled
            await self.engine.abort_async(self.engine_id)
        if not self._engine_done:
            self.finish_reason = self.finish_reason or "abort"
        self.services.admission.release()
        self.services.jobs.discard(self)
