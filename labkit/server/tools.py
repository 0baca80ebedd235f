"""Function tools on the chat path: what the model is told, the grammar of a forced call, and the calls read
back from its text.

The format is Hermes' (NousResearch, Qwen2.5): the tools are described in a system message, and a call is
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` in the assistant's text. Chat templates that
render `tools` themselves differ from model to model (SmolLM2's ignores them), so every model gets this one
description, and earlier calls and tool results go back into the conversation as text in the same format
(`<tool_call>` in the assistant's turn, `<tool_response>` in the tool's), which any template renders.

- `tool_choice: "none"`: the tools are not described and nothing is parsed.
- `"auto"` (the default with tools): free generation; `<tool_call>` blocks that parse and name a tool become
  calls, anything else stays text.
- `"required"` and a named function: generated under a grammar of the call (`<tool_call>` around a JSON
  schema of the name and the function's `parameters`), so the calls always parse and validate.
- `parallel_tool_calls: false`: exactly one call (the grammar stops after it; under auto, later calls are
  dropped, as vLLM does); true or left out: one or more.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from ..engine.structured_output import StructuredOutputsParams, _no_additional_properties
from .errors import bad_request

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.S)
# Fixed separators inside a forced call: flexible whitespace would let a small model emit blank lines forever.
_JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
_INSTRUCTIONS = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>")


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple  # FunctionTool models
    choice: str  # "auto", "required" or "named"
    name: str | None = None  # the named function
    parallel: bool = True

    def names(self) -> set[str]:
        return {t.function.name for t in self.tools}

    def system_prompt(self) -> str:
        return _INSTRUCTIONS.format(tools="\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in self.tools))

    def constraint(self) -> StructuredOutputsParams | None:
        """The grammar of a forced call (required or named), None under auto."""
        if self.choice == "auto":
            return None
        chosen = [t for t in self.tools if self.choice == "required" or t.function.name == self.name]
        schemas = [{"type": "object", "properties": {"name": {"const": t.function.name}, "arguments":
                    _no_additional_properties(t.function.parameters or {"type": "object"})},
                    "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
        schema = {**(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}), "x-guidance": _JSON_STYLE}
        start = 'start: call ("\\n" call)*' if self.parallel and self.choice == "required" else "start: call"
        return StructuredOutputsParams(grammar=f'{start}\ncall: "{OPEN}\\n" %json {json.dumps(schema)} "\\n{CLOSE}"\n')


def tool_plan(body) -> ToolPlan | None:
    """The body's tools and tool_choice, or None when no call can come back (no tools, or choice none)."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools; none were given.", param="tool_choice")
        return None
    names = [t.function.name for t in body.tools]
    if len(set(names)) != len(names):
        raise bad_request("Two tools have the same function name.", param="tools")
    if choice == "none":
        return None
    if choice is None or isinstance(choice, str):
        return ToolPlan(tuple(body.tools), choice or "auto", parallel=body.parallel_tool_calls is not False)
    if choice.function.name not in names:
        raise bad_request(f"tool_choice names {choice.function.name!r}, which is not among the tools.",
                          param="tool_choice")
    return ToolPlan(tuple(body.tools), "named", choice.function.name, parallel=False)


def template_messages(messages, plan: ToolPlan | None = None) -> list[dict]:
    """Chat messages as the chat template reads them: text only, tool calls and results written in Hermes'
    format, the tools' description in the system message (the first one's, or a new one)."""
    out = []
    for m in messages:
        text = m.text()
        if m.tool_calls:
            text = "\n".join([text] * bool(text) + [_call_text(c.function.name, c.function.arguments)
                                                    for c in m.tool_calls])
        if m.role == "tool":
            text = f"<tool_response>\n{text}\n</tool_response>"
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    if plan is not None:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{plan.system_prompt()}"}
        else:
            out.insert(0, {"role": "system", "content": plan.system_prompt()})
    return out


def _call_text(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments)
    except ValueError:  # sent back as the client had it
        args = arguments
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': args})}\n{CLOSE}"


def new_call(name: str, arguments: dict) -> dict:
    """A tool call as OpenAI's API shapes it: arguments as a JSON text."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


class ToolCallParser:
    """Reads one choice's text as it grows: `feed(delta)` and `finish()` give events, ("content", text) for
    text to show and ("call", call) for each whole `<tool_call>` block that parses and names a tool. Text
    that may begin a block is held back until it is known; a block that does not parse is shown as text."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.calls: list[dict] = []
        self._pending = ""
        self._blank = ""  # whitespace held back: it is dropped if only calls follow (the \n between calls)

    def feed(self, delta: str) -> list[tuple[str, object]]:
        self._pending += delta
        events = []
        while True:
            start = self._pending.find(OPEN)
            if start < 0:
                keep = _partial_suffix(self._pending, OPEN)
                events += self._content(self._pending[:len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep:]
                return events
            events += self._content(self._pending[:start])
            self._pending = self._pending[start:]
            end = self._pending.find(CLOSE)
            if end < 0:
                return events
            block, self._pending = self._pending[:end + len(CLOSE)], self._pending[end + len(CLOSE):]
            call = self._parse(block)
            if call is None:
                events += self._content(block)
            elif self.plan.parallel or not self.calls:
                self.calls.append(call)
                events.append(("call", call))

    def finish(self) -> list[tuple[str, object]]:
        """The rest: text held back (an unclosed block, cut by max_tokens, is text; under a forced call's
        grammar it can only be a further call cut short, which is dropped)."""
        forced_rest = self.plan.choice != "auto" and self.calls
        events = [] if forced_rest else self._content(self._pending)
        self._pending = ""
        if self._blank and not self.calls:
            events.append(("content", self._blank))
        self._blank = ""
        return events

    def _content(self, text: str) -> list[tuple[str, object]]:
        if not text:
            return []
        if not text.strip():
            self._blank += text
            return []
        text, self._blank = self._blank + text, ""
        return [("content", text)]

    def _parse(self, block: str) -> dict | None:
        match = _BLOCK.fullmatch(block)
        try:
            call = json.loads(match.group(1)) if match else None
        except ValueError:
            return None
        if not (isinstance(call, dict) and call.get("name") in self.plan.names()):
            return None
        args = call.get("arguments", call.get("parameters", {}))  # some models write "parameters"
        return new_call(call["name"], args) if isinstance(args, dict) else None


def parse_tool_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[dict]]:
    """(content, calls) of a whole text: content is None when the text held only calls."""
    parser = ToolCallParser(plan)
    events = parser.feed(text) + parser.finish()
    content = "".join(value for kind, value in events if kind == "content")
    return (content if content or not parser.calls else None), parser.calls


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
