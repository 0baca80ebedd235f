"""The one place engine tokens become what callers see (vLLM v1's output processor, run in the engine's loop
right after each step): text, decoded incrementally with `skip_special_tokens` honoured; stop strings, with
the tail that could begin one held back from the stream; finish reasons; the `RequestOutput`s. `LLM`,
`AsyncLLM`, `labkit generate` and the server all read text from here; nothing else decodes or matches stops.

Text is followed token by token only for requests that stream it or have stop strings; the others are
decoded once, when they finish (offline batches pay nothing per step).
"""
from __future__ import annotations

from collections.abc import Callable

from .outputs import RequestOutput
from .request import Request


class TextStream:
    """Text of a growing list of token ids. With a fast tokenizer, `tokenizers`' DecodeStream (Rust, about
    a microsecond a token); otherwise a window decoded before and after each token (vLLM's and TGI's
    prefix/read offsets). Both hold back half a multi-byte character until the rest arrives."""

    def __init__(self, tokenizer, skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._ids: list[int] = []
        self._unread = 0  # ids at the end not yet turned into text
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        if self._stream is not None:
            piece = self._stream.step(self._backend, token_id)
            self._unread = 0 if piece is not None else self._unread + 1
            return piece or ""
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        if full.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            self._unread += 1
            return ""
        self._prefix_offset, self._read_offset, self._unread = self._read_offset, len(self._ids), 0
        return full[len(prefix):] if full.startswith(prefix) else full

    def flush(self) -> str:
        """What the last tokens decode to on their own, even if incomplete (the request has ended)."""
        tail = self._ids[len(self._ids) - self._unread:] if self._unread else []
        self._unread = 0
        return self._decode(tail) if tail else ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)


class RequestText:
    """One request's text as it streams: what is safe to show, and what is held back because it could be
    the start of a stop string."""

    def __init__(self, tokenizer, stops: tuple[str, ...], skip_special_tokens: bool):
        self.stream = TextStream(tokenizer, skip_special_tokens)
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # shown so far
        self.pending = ""  # decoded, held back

    def add(self, token_id: int) -> str | None:
        """Take one token; return the stop string it completed, if any (the text is then cut before it)."""
        self.pending += self.stream.add(token_id)
        if self.stops:
            hits = [(at, stop) for stop in self.stops if (at := self.pending.find(stop)) >= 0]
            if hits:
                at, stop = min(hits)
                self.text += self.pending[:at]
                self.pending = ""
                return stop
        cut = max(0, len(self.pending) - self.hold) if self.stops else len(self.pending)
        self.text += self.pending[:cut]
        self.pending = self.pending[cut:]
        return None

    def finish(self, stopped_by_string: bool) -> str:
        if not stopped_by_string:
            self.text += self.pending + self.stream.flush()
            self.pending = ""
        return self.text


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.texts: dict[str, RequestText] = {}

    def add(self, request: Request, stream_text: bool) -> None:
        params = request.params
        if stream_text or params.stop:
            self.texts[request.request_id] = RequestText(self.tokenizer, params.stop, params.skip_special_tokens)

    def process(self, changed: list[tuple[Request, list[int]]], stop: Callable[[Request, str], None],
                fail: Callable[[Request, BaseException], None]) -> list[RequestOutput]:
        """Outputs for the requests a step advanced; `stop(request, string)` ends one at a stop string,
        `fail(request, error)` one whose text cannot be processed (it alone)."""
        outputs = []
        for request, new_token_ids in changed:
            text = self.texts.get(request.request_id)
            if text is not None:  # also for a request its last token just finished: it may complete a stop string
                try:
                    for token in new_token_ids:
                        hit = text.add(token)
                        if hit is not None:
                            stop(request, hit)
                            break
                except Exception as error:
                    self.texts.pop(request.request_id, None)
                    fail(request, error)
            outputs.append(self.output(request, new_token_ids))
        return outputs

    def output(self, request: Request, new_token_ids: list[int]) -> RequestOutput:
        finished = request.status.is_finished
        text = self.texts.get(request.request_id)
        if finished:
            self.texts.pop(request.request_id, None)
            if text is not None:
                shown = text.finish(stopped_by_string=isinstance(request.stop_reason, str))
            elif request.status.finish_reason == "error":
                shown = ""
            elif self.tokenizer is not None:
                shown = self.tokenizer.decode(request.output_token_ids,
                                              skip_special_tokens=request.params.skip_special_tokens)
            else:
                shown = ""
        else:
            shown = text.text if text is not None else None
        return RequestOutput(
            request_id=request.request_id, prompt=request.prompt, prompt_token_ids=request.prompt_token_ids,
            token_ids=list(request.output_token_ids), new_token_ids=new_token_ids, text=shown, finished=finished,
            finish_reason=request.status.finish_reason, stop_reason=request.stop_reason,
            metrics=request.metrics() if finished else None, error=request.error,
            num_cached_tokens=request.num_cached_tokens,
            logprobs=None if request.logprobs is None else list(request.logprobs),
            prompt_logprobs=None if request.prompt_logprobs is None else list(request.prompt_logprobs),
            cumulative_logprob=request.cumulative_logprob)
