"""/v1/responses bodies as chat requests (function tools and call items included), the fields a stateless
server refuses by name, and the output items and events built from the generated text."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from labkit.server.errors import APIError, bad_request
from labkit.server.responses_api import (UNSUPPORTED, ResponseDraft, ResponsesRequest, chat_request,
                                         in_responses_terms, refuse_unsupported)
from labkit.server.responses_stream import ResponseEvents
from labkit.server.schemas import ChatCompletionRequest
from labkit.server.tools import template_messages, tool_plan

pytestmark = pytest.mark.unit


def test_instructions_then_input_become_the_chat_messages():
    chat = chat_request(ResponsesRequest(instructions="Be brief.", input="Hi", max_output_tokens=9, temperature=0))
    assert [(m.role, m.text()) for m in chat.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert chat.max_tokens == 9 and chat.temperature == 0
    items = [{"role": "developer", "content": "Rules."},
             {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "c", "annotations": []}]}]
    chat = chat_request(ResponsesRequest(input=items))
    assert [(m.role, m.text()) for m in chat.messages] == [("developer", "Rules."), ("user", "ab"), ("assistant", "c")]
    assert "temperature" not in chat.model_fields_set  # left out: the model's default decides, as in chat


def test_items_parts_and_tools_not_supported_are_named():
    with pytest.raises(ValidationError, match="'reasoning'"):
        ResponsesRequest(input=[{"type": "reasoning", "id": "rs_1", "summary": []}])
    with pytest.raises(ValidationError, match="input_image"):
        ResponsesRequest(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
    with pytest.raises(ValidationError, match="input_file"):
        ResponsesRequest(input=[{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file"}]}])
    with pytest.raises(ValidationError, match="'web_search'"):
        ResponsesRequest(input="hi", tools=[{"type": "web_search"}])
    with pytest.raises(ValidationError, match="'file_search'"):
        ResponsesRequest(input="hi", tool_choice={"type": "file_search"})


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_tools_and_call_items_reach_the_template_as_chats_do():
    """Flat tools and a named choice are chat's nested ones; a function_call item joins the assistant turn
    before it and a function_call_output is a tool message: the prompt is the chat request's, to the byte."""
    items = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "Checking."},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": '{"celsius": 21}'}]
    chat = chat_request(ResponsesRequest(input=items, tools=[WEATHER], tool_choice={"type": "function",
                                                                                      "name": "get_weather"}))
    same = ChatCompletionRequest(
        messages=[items[0], {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
                  {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'}],
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    plan = tool_plan(chat)
    assert plan == tool_plan(same) and plan.choice == "named" and not plan.parallel
    assert template_messages(chat.messages, plan) == template_messages(same.messages, tool_plan(same))
    assert chat_request(ResponsesRequest(input="hi", tools=[WEATHER], max_tool_calls=1)).parallel_tool_calls is False


def _streamed(events: ResponseEvents, *deltas: str, finish_reason: str = "stop") -> list[str]:
    raw = events.opening() + [e for d in deltas for e in events.feed(d)] + events.closing(finish_reason, USAGE)
    return [e.split(b"\n", 1)[0].decode().removeprefix("event: ") for e in raw]


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": None}


def test_text_then_calls_become_items_in_order():
    body = ResponsesRequest(input="hi", tools=[WEATHER], max_tool_calls=2)
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>'
    events = ResponseEvents(ResponseDraft("req-abc", "m", body), tool_plan(chat_request(body)), body.max_tool_calls)
    types = _streamed(events, "Sure. <tool", "_call>" + block[11:] % "Paris", "\n" + block % "Rome",
                      "\n" + block % "Oslo")  # the third is past max_tool_calls: dropped
    message = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
               "response.output_text.done", "response.content_part.done", "response.output_item.done"]
    call = ["response.output_item.added", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done"]
    assert types == ["response.created", "response.in_progress", *message, *call, *call, "response.completed"]
    out = events.result["output"]
    assert [i["type"] for i in out] == ["message", "function_call", "function_call"]
    assert out[0]["content"][0]["text"] == "Sure. " and out[1]["arguments"] == '{"city": "Paris"}'
    assert out[2]["id"].startswith("fc_") and out[2]["call_id"].startswith("call_") and out[2]["status"] == "completed"
    assert events.result["tools"][0]["name"] == "get_weather" and events.result["max_tool_calls"] == 2


@pytest.mark.parametrize("field,value", [
    ("store", True), ("previous_response_id", "resp_1"), ("conversation", "conv_1"), ("prompt", {"id": "p"}),
    ("text", {"format": {"type": "xml"}}), ("reasoning", {"effort": "low"}),
    ("include", ["message.output_text.logprobs"]), ("truncation", "auto"), ("background", True), ("top_logprobs", 2)])
def test_what_cannot_be_honoured_is_a_400_naming_it(field, value):
    assert field in UNSUPPORTED
    with pytest.raises(APIError) as caught:
        refuse_unsupported(ResponsesRequest(input="hi", **{field: value}))
    assert caught.value.status == 400 and caught.value.param == field


def test_defaults_a_client_may_send_are_accepted():
    refuse_unsupported(ResponsesRequest(input="hi", store=False, tools=[], tool_choice="auto", truncation="disabled",
                                        text={"format": {"type": "text"}}, reasoning={"effort": None},
                                        background=False, top_logprobs=0, include=[]))


def test_chat_path_errors_name_the_responses_fields():
    err = in_responses_terms(bad_request("max_tokens is 9000 but ...", param="max_tokens"))
    assert err.param == "max_output_tokens" and err.message.startswith("max_output_tokens is 9000")
    assert in_responses_terms(bad_request("too long", param="messages")).param == "input"


def test_the_final_response_is_incomplete_when_cut_by_max_output_tokens():
    draft = ResponseDraft("req-abc", "m", ResponsesRequest(input="hi", max_output_tokens=3))
    events = ResponseEvents(draft)
    _streamed(events, "a b", " c", finish_reason="length")
    cut = events.result
    assert cut["id"] == "resp_abc" and cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["output"][0]["content"][0] == {"type": "output_text", "text": "a b c", "annotations": [], "logprobs": []}
    assert cut["usage"]["input_tokens"] == 5 and cut["usage"]["output_tokens"] == 3
    done = ResponseEvents(draft)
    _streamed(done)  # no text: still one (empty) message item, as before tools
    assert done.result["status"] == "completed" and done.result["output"][0]["content"][0]["text"] == ""
