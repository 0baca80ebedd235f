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
# generation_config.json's names -> SamplingParams'; vLLM takes the same ones as defaults for fields left out.
GENERATION_CONFIG_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                            "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}


def generation_defaults(model) -> dict:
    """The sampling defaults the model's generation_config.json sets (only what it sets: transformers' own
    defaults, such as top_k 50, are not the model's choice), under SamplingParams' names."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    chosen = config.to_diff_dict()
    return {ours: chosen[theirs] for theirs, ours in GENERATION_CONFIG_FIELDS.items()
            if chosen.get(theirs) is not None}


def sampling_params(body, prompt_tokens: int, max_model_len: int, defaults: dict | None = None,
                    vocab_size: int | None = None, structured_outputs=None) -> SamplingParams:
    """The engine's parameters for a completions or chat body, or a 400 naming the field that cannot fit or
    cannot be honoured. A sampling field left out takes `defaults` (the model's generation config)."""
    defaults = defaults or {}
    bias = _logit_bias(body.logit_bias)
    if vocab_size is not None:
        for name, ids in (("logit_bias", list(bias or ())), ("stop_token_ids", body.stop_token_ids or [])):
            if any(t >= vocab_size for t in ids):
                raise bad_request(f"{name} names a token id past this model's vocabulary (ids lie in "
                                  f"[0, {vocab_size})).", param=name)
    room = max_model_len - prompt_tokens
    if room < 1:
        raise bad_request(f"The prompt has {prompt_tokens} tokens; this model's context is {max_model_len} tokens, "
                          f"which leaves no room to generate.", param="messages" if hasattr(body, "messages")
                          else "prompt", code="context_length_exceeded")
    if body.max_tokens is not None and body.max_tokens > room:
        raise bad_request(f"max_tokens is {body.max_tokens} but the {prompt_tokens}-token prompt leaves {room} of "
                          f"this model's {max_model_len}-token context.", param="max_tokens",
                          code="context_length_exceeded")
    _refuse_what_cannot_be_honoured(body)
    max_tokens = body.max_tokens or min(defaults.get("max_tokens") or DEFAULT_MAX_TOKENS, room)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    chosen = {name: getattr(body, name) if getattr(body, name) is not None else defaults.get(name)
              for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
    try:
        return SamplingParams(
            **{name: value for name, value in chosen.items() if value is not None},
            max_tokens=max_tokens, min_tokens=min(body.min_tokens, max_tokens), stop=tuple(stops),
            stop_token_ids=tuple(body.stop_token_ids or ()), ignore_eos=body.ignore_eos, seed=body.seed,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            logit_bias=bias, n=body.n, skip_special_tokens=body.skip_special_tokens,
            logprobs=_logprobs(body), prompt_logprobs=body.logprobs if getattr(body, "echo", False) else None,
            structured_outputs=structured_outputs)
    except ValueError as err:  # a default from generation_config.json the engine refuses
        raise bad_request(f"Sampling parameters refused: {err}", param=None) from None


def _logprobs(body) -> int | None:
    if hasattr(body, "top_logprobs"):  # chat: a flag, and how many alternatives
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs needs logprobs: true.", param="top_logprobs")
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    try:
        ids = {int(token): value for token, value in bias.items()}
    except ValueError:  # not an integer (or one of thousands of digits)
        ids = {-1: 0.0}
    if min(ids) < 0:
        raise bad_request("logit_bias keys must be token ids (integers written as strings).", param="logit_bias")
    return ids


def _refuse_what_cannot_be_honoured(body) -> None:
    if getattr(body, "suffix", None):
        raise bad_request("suffix is not supported: this server does not fill in the middle.", param="suffix",
                          code="unsupported")
    best_of = getattr(body, "best_of", None)
    if best_of is not None and best_of != body.n:
        raise bad_request(f"best_of must equal n ({body.n}) or be left out: this server returns every choice it "
                          f"generates and does not rank them.", param="best_of", code="unsupported")


class GenerationJob:
    """One request on the engine. `stream()` yields text deltas; `close()` ends it for good (idempotent)."""

    def __init__(self, services, request_id: str, prompt_ids: list[int], params: SamplingParams):
        self.services = services
        self.engine = services.engine
        self.id = request_id
        # The engine's id is unique even when a client reuses its X-Request-Id for concurrent requests.
        self.engine_id = f"{request_id}#{next(services.engine_ids)}"
        self.params = params
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.finish_reason: str | None = None
        self.ttft_s: float | None = None
        self.timings = None  # the engine's RequestMetrics, once it finished the request (the trace's phases)
        self.started = time.perf_counter()
        self.timeout_s = services.config.request_timeout_s
        self.deadline = asyncio.get_running_loop().time() + self.timeout_s
        self._shown = ""  # text handed to the client so far
        self.prompt_ids = prompt_ids
        self.logprobs: list | None = None  # per output token so far, when the request asked (RequestOutput's)
        self.prompt_logprobs: list | None = None  # per prompt token, with echo + logprobs
        # Set once the engine has the prompt in its KV cache (its first output) or the job ended: n > 1 siblings
        # start then, so they find the prompt's pages in the prefix cache.
        self.prefilled = asyncio.Event()
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
            self.prefilled.set()
            self.logprobs, self.prompt_logprobs = out.logprobs, out.prompt_logprobs
            if out.new_token_ids:
                self.ttft_s = self.ttft_s if self.ttft_s is not None else time.perf_counter() - self.started
                self.completion_tokens += len(out.new_token_ids)
            if out.finished:
                self._engine_done = True
                self.finish_reason = out.finish_reason
                self.cached_tokens = out.num_cached_tokens or 0
                self.timings = out.metrics
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
        self.prefilled.set()
        try:
            await self._outputs.aclose()  # a stream left early aborts its request: KV pages freed
        except RuntimeError:  # still being iterated by a task that is being cancelled
            await self.engine.abort_async(self.engine_id)
        if not self._engine_done:
            self.finish_reason = self.finish_reason or "abort"
        self.services.admission.release()
        self.services.jobs.discard(self)
