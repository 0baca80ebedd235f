"""Structured outputs and tool calls through the server with the official `openai` client, on the default
model: `chat.completions.parse` with a pydantic model, json_object, vLLM's structured_outputs (choice,
regex), 400s naming the field for constraints that do not compile, forced tool calls (required, named;
plain and streamed) whose arguments validate, tool_choice none, and a conversation with a tool result; the
same on /v1/responses (function_call items, their streamed events, a second turn with the call's output)."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel


pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
WEATHER_ASK = [{"role": "user", "content": "What's the weather like in Paris?"}]
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
              "required": ["city", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": PARAMETERS}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


class Capital(BaseModel):
    city: str
    country: str


def test_parse_with_a_pydantic_model_returns_the_object(openai_client):
    reply = openai_client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Capital, temperature=0,
                                          max_tokens=64)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Capital) and reply.choices[0].finish_reason == "stop"


def test_json_object_output_parses(openai_client):
    reply = openai_client.chat.completions.create(model=MODEL, messages=ASK, response_format={"type": "json_object"},
                                           temperature=0, max_tokens=64)
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a prefix of an object
        assert reply.choices[0].message.content.lstrip().startswith("{")


def test_structured_outputs_choice_and_regex(openai_client):
    reply = openai_client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16, temperature=0,
                                           extra_body={"structured_outputs": {"choice": ["Paris", "Lyon", "Nice"]}})
    assert reply.choices[0].message.content in ("Paris", "Lyon", "Nice")
    done = openai_client.completions.create(model=MODEL, prompt="The year the Eiffel Tower was built:", max_tokens=16,
                                     temperature=0.8, seed=3, n=2,
                                     extra_body={"structured_outputs": {"regex": r" ?\d{4}"}})
    for choice in done.choices:  # each sibling has a matcher of its own
        assert choice.text.strip().isdigit() and len(choice.text.strip()) == 4


@pytest.mark.parametrize("extra, param", [
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"choice": ["a"]}}, "structured_outputs"),
])
def test_a_constraint_that_does_not_compile_is_a_400_naming_it(openai_client, default_server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, extra_body=extra)
    assert err.value.body["param"] == param
    assert default_server.app.state.services.num_running() == 0


def _arguments_valid(call, tools=TOOLS) -> dict:
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.function.name)
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_parse_and_validate(openai_client, choice):
    reply = openai_client.chat.completions.create(model=MODEL, messages=WEATHER_ASK, tools=TOOLS, tool_choice=choice,
                                           parallel_tool_calls=False, temperature=0, max_tokens=64)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    assert len(message.tool_calls) == 1 and message.tool_calls[0].id.startswith("call_")
    _arguments_valid(message.tool_calls[0])
    if isinstance(choice, dict):
        assert message.tool_calls[0].function.name == "get_time"


def test_streamed_tool_call_deltas_reassemble_to_the_plain_call(openai_client):
    fields = dict(model=MODEL, messages=WEATHER_ASK, tools=TOOLS, tool_choice="required",
                  parallel_tool_calls=False, temperature=0, max_tokens=64)
    plain = openai_client.chat.completions.create(**fields).choices[0].message.tool_calls[0]
    calls, reasons, content = {}, [], ""
    for chunk in openai_client.chat.completions.create(stream=True, **fields):
        choice = chunk.choices[0]
        reasons.append(choice.finish_reason)
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            if delta.id:  # the first delta of a call: id, type and name
                assert delta.type == "function" and delta.function.name
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert reasons[-1] == "tool_calls" and content == "" and list(calls) == [0]
    assert calls[0]["name"] == plain.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(plain.function.arguments)


def test_tool_choice_none_gives_text(openai_client):
    reply = openai_client.chat.completions.create(model=MODEL, messages=WEATHER_ASK, tools=TOOLS, tool_choice="none",
                                           temperature=0, max_tokens=16)
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_tool_result_reaches_the_model(openai_client):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    messages = WEATHER_ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                              {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
    short = openai_client.chat.completions.create(model=MODEL, messages=WEATHER_ASK, tools=TOOLS, max_tokens=8,
                                           temperature=0)
    reply = openai_client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=8,
                                           temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # the call and its result are in the prompt: it is longer by at least their text
    assert reply.usage.prompt_tokens > short.usage.prompt_tokens + 15


def test_responses_text_format_json_schema(openai_client):
    schema = Capital.model_json_schema()
    reply = openai_client.responses.create(model=MODEL, input=ASK[0]["content"], temperature=0, max_output_tokens=64,
                                    text={"format": {"type": "json_schema", "name": "capital", "schema": schema,
                                                     "strict": True}})
    assert reply.status == "completed" and reply.text.format.type == "json_schema"
    Capital.model_validate_json(reply.output_text)
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.responses.create(model=MODEL, input="hi", text={"format": {"type": "json_schema", "name": "x",
                                                                           "schema": {"type": "nonsense"}}})
    assert err.value.body["param"] == "text.format"


# /v1/responses: the same tools in the Responses API's flat shape, calls as function_call output items
RESPONSES_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]


def _item_arguments_valid(item) -> dict:
    assert item.type == "function_call" and item.status == "completed" and item.call_id.startswith("call_")
    schema = next(t["parameters"] for t in RESPONSES_TOOLS if t["name"] == item.name)
    arguments = json.loads(item.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_time"}])
def test_responses_forced_function_call_validates(openai_client, choice):
    reply = openai_client.responses.create(model=MODEL, input=WEATHER_ASK[0]["content"], tools=RESPONSES_TOOLS,
                                    tool_choice=choice, parallel_tool_calls=False, temperature=0,
                                    max_output_tokens=64)
    assert reply.status == "completed" and [item.type for item in reply.output] == ["function_call"]
    _item_arguments_valid(reply.output[0])
    if isinstance(choice, dict):
        assert reply.output[0].name == "get_time"
    assert reply.tools[0].name == "get_weather" and reply.output_text == ""


def test_responses_streamed_function_call_equals_the_plain_one(openai_client):
    fields = dict(model=MODEL, input=WEATHER_ASK[0]["content"], tools=RESPONSES_TOOLS, tool_choice="required",
                  parallel_tool_calls=False, temperature=0, max_output_tokens=64)
    plain = openai_client.responses.create(**fields).output[0]
    events = list(openai_client.responses.create(stream=True, **fields))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, delta, done, item_done, completed = events[2:]
    assert added.item.type == "function_call" and added.item.status == "in_progress" and added.item.arguments == ""
    assert delta.item_id == done.item_id == added.item.id == item_done.item.id and delta.output_index == 0
    assert delta.delta == done.arguments == item_done.item.arguments
    assert item_done.item.name == plain.name and json.loads(done.arguments) == json.loads(plain.arguments)
    assert completed.response.output[0].arguments == done.arguments
    _item_arguments_valid(item_done.item)


def test_responses_second_turn_with_the_call_and_its_output_gets_text(openai_client):
    first = openai_client.responses.create(model=MODEL, input=WEATHER_ASK[0]["content"], tools=RESPONSES_TOOLS,
                                    tool_choice={"type": "function", "name": "get_weather"},
                                    parallel_tool_calls=False, temperature=0, max_output_tokens=64)
    call = first.output[0]
    history = [{"role": "user", "content": WEATHER_ASK[0]["content"]}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'}]
    reply = openai_client.responses.create(model=MODEL, input=history, tools=RESPONSES_TOOLS, tool_choice="none",
                                    temperature=0, max_output_tokens=32)
    assert reply.status in ("completed", "incomplete") and reply.output_text
    assert [item.type for item in reply.output] == ["message"]
    bare = openai_client.responses.create(model=MODEL, input=WEATHER_ASK[0]["content"], tools=RESPONSES_TOOLS,
                                   tool_choice="none", max_output_tokens=1)
    assert reply.usage.input_tokens > bare.usage.input_tokens + 15  # the call and its result reached the prompt
    with pytest.raises(openai.BadRequestError) as err:  # text.format and a forced call: chat's 400, in these words
        openai_client.responses.create(model=MODEL, input="hi", tools=RESPONSES_TOOLS, tool_choice="required",
                                text={"format": {"type": "json_object"}})
    assert err.value.body["param"] == "text.format"
