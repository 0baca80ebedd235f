"""Tool calls and output constraints of a chat body, without a model: the Hermes-style `<tool_call>` format
read back from fixed texts (whole and streamed character by character), the plan of tools and tool_choice,
messages with tool calls and results as the template reads them, and the 400s of structured outputs."""
from __future__ import annotations

import json

import pytest

from labkit.server.errors import APIError
from labkit.server.schemas import ChatCompletionRequest
from labkit.server.structured import requested
from labkit.server.tools import ToolCallParser, parse_tool_calls, template_messages, tool_plan

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def body(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "Weather in Paris?"}], **fields)


def plan(**fields):
    return tool_plan(body(tools=[WEATHER], **fields))


def test_auto_reads_calls_and_keeps_the_rest_as_text():
    content, calls = parse_tool_calls(CALL, plan())
    assert content is None and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    content, calls = parse_tool_calls("Let me look.\n" + CALL + "\n" + CALL, plan())
    assert content == "Let me look.\n" and len(calls) == 2


@pytest.mark.parametrize("text", [
    "Paris is sunny.",
    '<tool_call>\n{"name": "unknown_tool", "arguments": {}}\n</tool_call>',  # not one of the tools
    "<tool_call>\n{not json}\n</tool_call>",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut by max_tokens
])
def test_text_that_is_not_a_whole_call_stays_text(text):
    assert parse_tool_calls(text, plan()) == (text, [])


def test_parallel_false_keeps_the_first_call():
    _, calls = parse_tool_calls(CALL + "\n" + CALL, plan(parallel_tool_calls=False))
    assert len(calls) == 1


def test_streamed_text_gives_the_same_content_and_calls_and_never_shows_a_partial_tag():
    text = "Checking. " + CALL + "\n" + CALL
    parser = ToolCallParser(plan())
    events = []
    for char in text:
        events += parser.feed(char)
    events += parser.finish()
    content = "".join(v for k, v in events if k == "content")
    assert content.strip() == "Checking." and "<" not in content
    assert [k for k, _ in events].count("call") == 2


def test_tool_choice_checks():
    assert tool_plan(body()) is None and plan(tool_choice="none") is None
    assert plan().choice == "auto" and plan(tool_choice="required").choice == "required"
    named = plan(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choice == "named" and named.name == "get_weather" and not named.parallel
    for fields, param in [({"tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
                          ({"tools": [WEATHER, WEATHER]}, "tools")]:
        with pytest.raises(APIError) as err:
            tool_plan(body(**{"tools": [WEATHER], **fields}))
        assert err.value.status == 400 and err.value.param == param
    with pytest.raises(APIError) as err:
        tool_plan(body(tool_choice="required"))
    assert err.value.param == "tool_choice"


def test_forced_calls_have_a_grammar_and_auto_has_none():
    assert plan().constraint() is None
    grammar = plan(tool_choice="required").constraint().grammar
    assert "<tool_call>" in grammar and '"const": "get_weather"' in grammar and "call)*" in grammar
    assert "call)*" not in plan(tool_choice="required", parallel_tool_calls=False).constraint().grammar


def test_tool_calls_and_results_reach_the_template_as_text():
    messages = ChatCompletionRequest(tools=[WEATHER], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]).messages
    out = template_messages(messages, plan())
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.") and "<tools>" in out[0]["content"]
    assert out[2] == {"role": "assistant", "content": CALL}
    assert out[3] == {"role": "tool", "content": "<tool_response>\n21 C\n</tool_response>"}
    assert "<tools>" not in json.dumps(template_messages(messages))  # no tools: nothing described


@pytest.mark.parametrize("fields, param", [
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"structured_outputs": {"pattern": "a"}}, "structured_outputs.pattern"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
])
def test_malformed_constraints_are_400s_naming_the_field(fields, param):
    with pytest.raises(APIError) as err:
        requested(body(**fields))
    assert err.value.status == 400 and err.value.param == param


def test_constraint_sources():
    assert requested(body()) == (None, None)
    assert requested(body(response_format={"type": "text"})) == (None, None)
    params, param = requested(body(response_format={"type": "json_object"}))
    assert params.json_object and param == "response_format"
    params, param = requested(body(structured_outputs={"choice": ["a", "b"], "disable_fallback": True}))
    assert params.choice == ("a", "b") and param == "structured_outputs.choice"
    params, param = requested(body(guided_regex=r"\d+"))
    assert params.regex == r"\d+" and param == "guided_regex"


def test_a_forced_call_cut_short_after_whole_ones_is_dropped():
    content, calls = parse_tool_calls(CALL + "\n" + CALL[:30], plan(tool_choice="required"))
    assert content is None and len(calls) == 1
