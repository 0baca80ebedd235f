"""POST /v1/responses (OpenAI's Responses API), stateless: the request body, what it becomes for the chat
path, and the response object.

A Responses request is a chat request in other words: `instructions` is a system message ahead of `input`
(a text, which is one user message, or a list of items: messages, earlier function calls and their outputs,
responses_items.py), `max_output_tokens` is `max_tokens`, and function `tools` are chat's in a flat shape. It
runs as a `ChatCompletionRequest` through the same start as /v1/chat/completions, so sampling checks, tool
handling (tools.py) and errors are the chat route's. Nothing is stored: `store: true` and `previous_response_id` are 400s naming
the field, and so is every other field this server cannot honour (`UNSUPPORTED`), never silently dropped.
"""
from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import APIError, bad_request
from .responses_items import (InputItem, InputMessage, ResponsesFunctionTool, ResponsesNamedToolChoice,
                              chat_messages, chat_tool_choice, chat_tools, unsupported_input, unsupported_tool,
                              unsupported_tool_choice)
from .schemas import ChatCompletionRequest, ChatMessage, Count, JSONObject, Temperature, Text, TopP


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields: accepted, logged once per name (as chat)

    model: Text | None = Field(None, description="The served model's id; omitted means that one.")
    input: Annotated[Text, Field(max_length=1_000_000)] | Annotated[list[InputItem], Field(min_length=1)] = Field(
        ..., description="A text (one user message) or a list of items: messages, function_call and "
                         "function_call_output.")
    instructions: Text | None = Field(None, description="A system message placed before the input.")
    max_output_tokens: Count | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool = False
    metadata: dict[str, Text] | None = Field(None, description="Echoed back on the response.")
    user: Text | None = None
    # Accepted so that a client may send its defaults; anything beyond them is refused (UNSUPPORTED).
    store: bool | None = Field(None, description="Only false: the server keeps no responses.")
    previous_response_id: Text | None = Field(None, description="Not supported: the server keeps no responses.")
    conversation: str | dict[str, Any] | None = Field(None, description="Not supported: the server keeps none.")
    prompt: dict[str, Any] | None = Field(None, description="Not supported: no stored prompt templates.")
    tools: Annotated[list[ResponsesFunctionTool], Field(max_length=128)] | None = Field(
        None, description="Function tools (flat: type, name, description, parameters, strict).")
    tool_choice: Literal["none", "auto", "required"] | ResponsesNamedToolChoice | None = Field(
        None, description="Default: auto with tools. required and a named function ({'type': 'function', "
                          "'name'}) are generated under the call's JSON-schema grammar.")
    parallel_tool_calls: bool | None = Field(None, description="Default true: one or more calls; false: one.")
    max_tool_calls: int | None = Field(None, ge=1, le=128, description="Calls past this many are dropped.")
    text: JSONObject | None = Field(None, description="{'format': {'type': 'text' | 'json_object' | "
                                                       "'json_schema', 'name', 'schema', 'strict'}}.")
    reasoning: dict[str, Any] | None = Field(None, description="Not supported (no reasoning models).")
    include: list[str] | None = Field(None, description="Not supported (must be empty).")
    truncation: Literal["auto", "disabled"] | None = Field(None, description="Only 'disabled'.")
    background: bool | None = Field(None, description="Only false.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Only 0.")

    @field_validator("input", "tools", "tool_choice", mode="before")
    @classmethod
    def _name_what_is_not_supported(cls, value, info):
        """Name an item, part or tool kind this server has no use for, rather than a union's type errors."""
        check = {"input": unsupported_input, "tools": unsupported_tool, "tool_choice": unsupported_tool_choice}
        why = check[info.field_name](value)
        if why:
            raise ValueError(why)
        return value


_FORMATS = ("text", "json_object", "json_schema")  # text.format types (the chat path's response_format)
# field -> (is it asked for something this server cannot do?, why). One table, so a feature that lands
# (logprobs, say) is one row removed and its handling added where the chat path has it.
UNSUPPORTED = {
    "store": (lambda b: b.store is True, "the server is stateless and keeps no responses; send store: false"),
    "previous_response_id": (lambda b: b.previous_response_id is not None,
                             "the server is stateless; send the earlier messages in 'input' instead"),
    "conversation": (lambda b: b.conversation is not None, "the server is stateless and keeps no conversations"),
    "prompt": (lambda b: b.prompt is not None, "the server keeps no prompt templates; send 'input'"),
    "text": (lambda b: (b.text or {}).get("format", {"type": "text"}).get("type") not in _FORMATS,
             f"text.format.type must be one of {', '.join(_FORMATS)}"),
    "reasoning": (lambda b: bool(b.reasoning and any(v is not None for v in b.reasoning.values())),
                  "reasoning options are not supported"),
    "include": (lambda b: bool(b.include), "no extra output data can be included"),
    "truncation": (lambda b: b.truncation == "auto", "only truncation 'disabled' is supported"),
    "background": (lambda b: bool(b.background), "background responses need stored state"),
    "top_logprobs": (lambda b: bool(b.top_logprobs), "log-probabilities are not supported by /v1/responses"),
}


def refuse_unsupported(body: ResponsesRequest) -> None:
    for field, (asked, why) in UNSUPPORTED.items():
        if asked(body):
            raise bad_request(f"'{field}' is not supported: {why}.", param=field, code="unsupported")


def chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request this Responses request stands for (values already validated with the same types)."""
    items = [InputMessage(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    messages = [ChatMessage(role="system", content=body.instructions)] if body.instructions is not None else []
    messages += chat_messages(items)
    # one call at most: the grammar of a forced call stops after it (later ones are dropped otherwise)
    parallel = False if body.max_tool_calls == 1 else body.parallel_tool_calls
    fields = {"model": body.model, "messages": messages, "max_tokens": body.max_output_tokens,
              "temperature": body.temperature, "top_p": body.top_p, "user": body.user,
              "response_format": response_format(body.text), "tools": chat_tools(body.tools),
              "tool_choice": chat_tool_choice(body.tool_choice), "parallel_tool_calls": parallel}
    try:
        return ChatCompletionRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:  # a check of the chat path's that the Responses fields do not make: still a 400
        first = err.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else None
        param = _PARAMS.get(field, field)
        raise bad_request(f"Invalid value for '{param}': {first['msg']}.", param=param) from None


# The chat path's names for what the Responses API calls otherwise, for its error messages.
_PARAMS = {"messages": "input", "prompt": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}


def response_format(text: dict | None) -> dict | None:
    """`text.format` as the chat path's `response_format`: the Responses API puts the schema's fields beside
    its type (`{"type": "json_schema", "name", "schema", "strict"}`), chat nests them under `json_schema`."""
    spec = dict((text or {}).get("format") or {"type": "text"})
    if spec.get("type") != "json_schema":
        return spec
    kind = spec.pop("type")
    return {"type": kind, "json_schema": spec}


def in_responses_terms(err: APIError) -> APIError:
    """The chat path's error about `max_tokens` or `messages`, naming the Responses field instead."""
    if err.param in _PARAMS:
        err.message = err.message.replace(err.param, _PARAMS[err.param])
        err.param = _PARAMS[err.param]
    return err


class ResponseDraft:
    """The response object of one request, built as its generation goes (for the plain answer and for the
    snapshots streamed events carry)."""

    def __init__(self, request_id: str, model: str, body: ResponsesRequest):
        suffix = request_id.removeprefix("req-")
        self.id, self.item_id = f"resp_{suffix}", f"msg_{suffix}"
        self.model, self.body, self.created_at = model, body, int(time.time())

    def message(self, text: str | None, status: str, suffix: str = "") -> dict:
        """A message item (`suffix` tells a later one's id from the first's); text None: an empty text part."""
        return {"id": self.item_id + suffix, "type": "message", "role": "assistant", "status": status,
                "content": [output_text(text or "")]}

    def response(self, status: str, output: list[dict], usage: dict | None = None,
                 finish_reason: str | None = None) -> dict:
        b = self.body
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if finish_reason == "length" else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
            # as sent: left out, the model's generation config chooses (the chat path's rule), not 1.0
            "temperature": b.temperature, "text": {"format": (b.text or {}).get("format") or {"type": "text"}},
            "tool_choice": _dumped(b.tool_choice) or "auto", "tools": [_dumped(t) for t in b.tools or ()],
            "max_tool_calls": b.max_tool_calls, "top_p": b.top_p,
            "truncation": "disabled", "usage": usage, "user": b.user, "metadata": b.metadata or {},
        }


def _dumped(value):
    return value.model_dump() if isinstance(value, BaseModel) else value


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(chat_usage: dict) -> dict:
    """The chat path's usage in the Responses API's names."""
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": chat_usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": chat_usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat_usage["total_tokens"]}
