"""The output of a /v1/responses answer, item by item, and the Server-Sent Events that stream it, in the
order OpenAI's Responses API sends them:

    response.created, response.in_progress, then for each output item in turn
      a message:        response.output_item.added, response.content_part.added,
                        response.output_text.delta (one per text delta), response.output_text.done,
                        response.content_part.done, response.output_item.done
      a function call:  response.output_item.added (arguments ""), response.function_call_arguments.delta,
                        response.function_call_arguments.done, response.output_item.done
    then response.completed (or response.incomplete past max_output_tokens)

Each is `event: <type>` plus `data: {json}` whose `type` repeats it and whose `sequence_number` counts from
0. There is no `[DONE]`: the last event ends the stream. A failure after the 200 header is an `error` event
followed by `response.failed`.

A plain answer is built by the same class (its events unsent), so its `output` is the stream's. Without
tools there is always one message item, opened at once; with tools the text goes through chat's
`ToolCallParser`, a message item opens when text comes, and each call becomes a `function_call` item when
its `<tool_call>` block is whole (as chat streams a call: once whole, never a partial argument).
"""
from __future__ import annotations

import json

from .responses_api import ResponseDraft, output_text, usage
from .tools import ToolCallParser, ToolPlan


class ResponseEvents:
    """Builds the output items of one response and the events that stream them, numbering the events."""

    def __init__(self, draft: ResponseDraft, plan: ToolPlan | None = None, max_tool_calls: int | None = None):
        self.draft = draft
        self.sequence_number = 0
        self.output: list[dict] = []  # items finished so far (and the open message, last, while open)
        self.parser = ToolCallParser(plan) if plan is not None else None
        self.max_tool_calls = max_tool_calls
        self.calls = 0
        self._open: dict | None = None  # the message item text is going into
        self._messages = 0
        self.result: dict | None = None  # the whole response, once closed (a plain answer's body)

    def _event(self, type: str, **fields) -> bytes:
        payload = {"type": type, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return f"event: {type}\ndata: {data}\n\n".encode()

    def opening(self) -> list[bytes]:
        """response.created and .in_progress; without tools, the message item the deltas will fill."""
        snapshot = self.draft.response("in_progress", [])
        events = [self._event("response.created", response=snapshot),
                  self._event("response.in_progress", response=snapshot)]
        return events + (self._open_message() if self.parser is None else [])

    def feed(self, delta: str) -> list[bytes]:
        """The events of a text delta: text, or (with tools) calls as their blocks complete."""
        if self.parser is None:
            return self._text(delta)
        return self._parsed(self.parser.feed(delta))

    def closing(self, finish_reason: str, chat_usage: dict) -> list[bytes]:
        """Text held back, the open message's end, then response.completed (or .incomplete)."""
        events = self._parsed(self.parser.finish()) if self.parser is not None else []
        status = "incomplete" if finish_reason == "length" else "completed"
        events += self._close_message(status)
        self.result = self.draft.response(status, self.output, usage(chat_usage), finish_reason)
        return events + [self._event(f"response.{status}", response=self.result)]

    def failure(self, err, chat_usage: dict) -> list[bytes]:
        """An `error` event (OpenAI's fields), then `response.failed` with what was generated before it."""
        if self._open is not None:
            self._open["status"] = "incomplete"
        failed = self.draft.response("failed", self.output, usage(chat_usage))
        failed["error"] = {"code": err.code or "server_error", "message": err.message}
        return [self._event("error", code=err.code, message=err.message, param=err.param),
                self._event("response.failed", response=failed)]

    # ---- messages ----

    def _where(self) -> dict:
        return {"item_id": self._open["id"], "output_index": len(self.output) - 1, "content_index": 0}

    def _open_message(self) -> list[bytes]:
        suffix = f"_{self._messages}" if self._messages else ""  # a later message (text after a call)
        self._messages += 1
        self._open = self.draft.message(None, "in_progress", suffix)
        self.output.append(self._open)
        item = {**self._open, "content": []}
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=item),
                self._event("response.content_part.added", **self._where(), part=output_text(""))]

    def _text(self, delta: str) -> list[bytes]:
        events = self._open_message() if self._open is None else []
        self._open["content"][0]["text"] += delta
        return events + [self._event("response.output_text.delta", **self._where(), delta=delta, logprobs=[])]

    def _close_message(self, status: str) -> list[bytes]:
        if self._open is None:
            return []
        item, where = self._open, self._where()
        text = item["content"][0]["text"]
        item["status"] = status
        self._open = None
        return [self._event("response.output_text.done", **where, text=text, logprobs=[]),
                self._event("response.content_part.done", **where, part=output_text(text)),
                self._event("response.output_item.done", output_index=where["output_index"], item=item)]

    # ---- function calls ----

    def _parsed(self, parsed: list[tuple[str, object]]) -> list[bytes]:
        events = []
        for kind, value in parsed:
            events += self._text(value) if kind == "content" else self._call(value)
        return events

    def _call(self, call: dict) -> list[bytes]:
        if self.max_tool_calls is not None and self.calls >= self.max_tool_calls:
            return []  # past max_tool_calls: dropped, as parallel_tool_calls: false drops all but the first
        self.calls += 1
        events = self._close_message("completed")
        item = function_call_item(call)
        index = len(self.output)
        self.output.append(item)
        where = {"item_id": item["id"], "output_index": index}
        arguments = item["arguments"]
        return events + [
            self._event("response.output_item.added", output_index=index,
                        item={**item, "arguments": "", "status": "in_progress"}),
            self._event("response.function_call_arguments.delta", **where, delta=arguments),
            self._event("response.function_call_arguments.done", **where, arguments=arguments),
            self._event("response.output_item.done", output_index=index, item=item)]


def function_call_item(call: dict) -> dict:
    """Chat's tool call (tools.new_call) as a Responses `function_call` output item."""
    return {"id": "fc_" + call["id"].removeprefix("call_"), "type": "function_call", "status": "completed",
            "call_id": call["id"], "name": call["function"]["name"], "arguments": call["function"]["arguments"]}
