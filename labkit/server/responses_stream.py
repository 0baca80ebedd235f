"""The Server-Sent Events of a streamed /v1/responses answer, in the order OpenAI's Responses API sends them:

    response.created, response.in_progress, response.output_item.added, response.content_part.added,
    response.output_text.delta (one per text delta), response.output_text.done, response.content_part.done,
    response.output_item.done, then response.completed (or response.incomplete past max_output_tokens)

Each is `event: <type>` plus `data: {json}` whose `type` repeats it and whose `sequence_number` counts from
0. There is no `[DONE]`: the last event ends the stream. A failure after the 200 header is an `error` event
followed by `response.failed`.
"""
from __future__ import annotations

import json

from .responses_api import ResponseDraft, output_text, usage


class ResponseEvents:
    """Builds the events of one streamed response, numbering them."""

    def __init__(self, draft: ResponseDraft):
        self.draft = draft
        self.sequence_number = 0
        self._where = {"item_id": draft.item_id, "output_index": 0, "content_index": 0}

    def _event(self, type: str, **fields) -> bytes:
        payload = {"type": type, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return f"event: {type}\ndata: {data}\n\n".encode()

    def opening(self) -> list[bytes]:
        """From response.created to the empty text part the deltas will fill."""
        snapshot = self.draft.response("in_progress", [])
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot),
                self._event("response.output_item.added", output_index=0,
                            item=self.draft.message(None, "in_progress")),
                self._event("response.content_part.added", **self._where, part=output_text(""))]

    def delta(self, text: str) -> bytes:
        return self._event("response.output_text.delta", **self._where, delta=text, logprobs=[])

    def closing(self, text: str, finish_reason: str, chat_usage: dict) -> list[bytes]:
        """From response.output_text.done to response.completed (or .incomplete), with the whole text."""
        final = self.draft.finished(text, finish_reason, chat_usage)
        return [self._event("response.output_text.done", **self._where, text=text, logprobs=[]),
                self._event("response.content_part.done", **self._where, part=output_text(text)),
                self._event("response.output_item.done", output_index=0, item=final["output"][0]),
                self._event(f"response.{final['status']}", response=final)]

    def failure(self, err, text: str, chat_usage: dict) -> list[bytes]:
        """An `error` event (OpenAI's fields), then `response.failed` with what was generated before it."""
        failed = self.draft.response("failed", [self.draft.message(text, "incomplete")], usage(chat_usage))
        failed["error"] = {"code": err.code or "server_error", "message": err.message}
        return [self._event("error", code=err.code, message=err.message, param=err.param),
                self._event("response.failed", response=failed)]
