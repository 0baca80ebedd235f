"""What a /v1/responses request carries beyond text, in the Responses API's shapes, and what each becomes on
the chat path (whose tool handling, tools.py, is the one there is):

- message items (`role`, text or `input_text`/`output_text` parts) -> chat messages;
- `function_call` items (an earlier call sent back: `call_id`, `name`, `arguments`) -> an assistant message's
  `tool_calls` (joined onto the assistant message just before them, as chat writes text and calls in one turn);
- `function_call_output` items (`call_id`, `output`) -> `tool` messages;
- tools, flat (`{"type": "function", "name", "description", "parameters", "strict"}`) -> chat's nested
  `{"type": "function", "function": {...}}`; a named `tool_choice` `{"type": "function", "name"}` likewise.

Item and tool kinds this server has no use for (images, files, hosted tools such as web_search) are refused
by name before a union's type errors could hide what was wrong.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag

from .schemas import ChatMessage, FunctionCall, FunctionDefinition, FunctionTool, NamedFunction, NamedToolChoice, \
    Text, ToolCall

ITEM_TYPES = ("message", "function_call", "function_call_output")
PART_TYPES = ("input_text", "output_text")


class InputText(BaseModel):
    """A text part. `output_text` is what an earlier response's message item holds, sent back as history."""
    type: Literal["input_text", "output_text"]
    text: Text


def _joined(content) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class InputMessage(BaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Text | list[InputText]
    id: str | None = None  # an earlier response's item sent back: accepted, not needed
    status: str | None = None

    def text(self) -> str:
        return _joined(self.content)


class FunctionCallItem(BaseModel):
    """An earlier response's `function_call` output item, sent back as history."""
    type: Literal["function_call"]
    call_id: Text
    name: Text
    arguments: Text = Field(..., description="The arguments as a JSON text.")
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(BaseModel):
    """The result of running a call, for the model to read."""
    type: Literal["function_call_output"]
    call_id: Text
    output: Text | list[InputText] = Field(..., description="The function's result (text, or text parts).")
    id: str | None = None
    status: str | None = None


def _item_type(item) -> str:
    return item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")


InputItem = Annotated[Union[Annotated[InputMessage, Tag("message")], Annotated[FunctionCallItem, Tag("function_call")],
                            Annotated[FunctionCallOutputItem, Tag("function_call_output")]], Discriminator(_item_type)]


class ResponsesFunctionTool(FunctionDefinition):
    """A function tool in the Responses API's flat shape: chat's `function` fields beside `type`."""
    type: Literal["function"]


class ResponsesNamedToolChoice(BaseModel):
    type: Literal["function"]
    name: Text


def unsupported_input(items) -> str | None:
    """Why a raw `input` list cannot be taken (an item or part kind this server has no use for), or None."""
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind not in ITEM_TYPES:
            return f"input items of type {kind!r} are not supported (only {', '.join(ITEM_TYPES)})"
        parts = item.get("content") if kind == "message" else item.get("output")
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("type") not in PART_TYPES:
                return f"content parts of type {part.get('type')!r} are not supported (only {', '.join(PART_TYPES)})"
    return None


def unsupported_tool(tools) -> str | None:
    """Why a raw `tools` list cannot be taken: a hosted tool (web_search, file_search, ...), or None."""
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") != "function":
            return f"tools of type {tool.get('type')!r} are not supported (only function tools)"
    return None


def unsupported_tool_choice(choice) -> str | None:
    if isinstance(choice, dict) and choice.get("type") != "function":
        return f"tool_choice of type {choice.get('type')!r} is not supported (only none, auto, required or a function)"
    return None


def chat_messages(items: list) -> list[ChatMessage]:
    """Input items as chat messages: calls join the assistant turn they follow, outputs are tool messages."""
    out: list[ChatMessage] = []
    for item in items:
        if isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            if out and out[-1].role == "assistant":
                out[-1] = out[-1].model_copy(update={"tool_calls": [*(out[-1].tool_calls or []), call]})
            else:
                out.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            out.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=_joined(item.output)))
        else:
            out.append(ChatMessage(role=item.role, content=item.text()))
    return out


def chat_tools(tools: list[ResponsesFunctionTool] | None) -> list[FunctionTool] | None:
    if tools is None:
        return None
    return [FunctionTool(type="function", function=FunctionDefinition(**t.model_dump(exclude={"type"})))
            for t in tools]


def chat_tool_choice(choice):
    if isinstance(choice, ResponsesNamedToolChoice):
        return NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    return choice
