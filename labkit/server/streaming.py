"""Server-Sent Events for streamed completions, and the OpenAI chunk shapes they carry.

`SSEResponse` always listens for the client's disconnect while it streams, and runs `on_close` when the
response ends for any reason (finished, client gone, server shutting down), so an abandoned request is
cancelled at once and its KV memory freed, not when the next token would have been sent.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse

DONE = b"data: [DONE]\n\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kwargs):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **kwargs.pop("headers", {})}
        super().__init__(content, headers=headers, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            async with anyio.create_task_group() as tasks:
                async def stream_then_stop():
                    await self.stream_response(send)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(stream_then_stop)
                await self.listen_for_disconnect(receive)
                tasks.cancel_scope.cancel()  # the client left: stop streaming now
        except OSError:  # the socket went away under a send
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close()


class ChunkFormat:
    """Builds the chunks of one streamed response, for /v1/completions or /v1/chat/completions."""

    def __init__(self, chat: bool, request_id: str, model: str, created: int):
        self.chat = chat
        self.base = {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": model}

    def _chunk(self, choice: dict, **extra) -> bytes:
        return event({**self.base, "choices": [choice], **extra})

    def first(self, index: int = 0) -> bytes | None:
        """Chat streams open with the assistant role, as OpenAI's do."""
        if self.chat:
            return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None})
        return None

    def delta(self, text: str, index: int = 0, logprobs: dict | None = None) -> bytes:
        if self.chat:
            return self._chunk({"index": index, "delta": {"content": text}, "logprobs": logprobs,
                                "finish_reason": None})
        return self._chunk({"index": index, "text": text, "logprobs": logprobs, "finish_reason": None})

    def tool_call(self, call: dict, call_index: int, index: int = 0) -> list[bytes]:
        """One whole tool call as OpenAI streams one: its id, type and name with empty arguments, then the
        arguments (which a client appends to those of the same `index`)."""
        head = {"index": call_index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        rest = {"index": call_index, "function": {"arguments": call["function"]["arguments"]}}
        return [self._chunk({"index": index, "delta": {"tool_calls": [part]}, "logprobs": None,
                             "finish_reason": None}) for part in (head, rest)]

    def finish(self, reason: str, index: int = 0) -> bytes:
        if self.chat:
            return self._chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason})
        return self._chunk({"index": index, "text": "", "logprobs": None, "finish_reason": reason})

    def usage(self, usage: dict) -> bytes:
        return event({**self.base, "choices": [], "usage": usage})


def full_response(chat: bool, request_id: str, model: str, created: int, text: str, finish_reason: str,
                  usage: dict) -> dict:
    """The non-streamed body of a completion or chat completion."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": request_id, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice], "usage": usage}
