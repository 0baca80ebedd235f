"""The endpoints beyond completions, on the real default model: /v1/responses (plain and streamed, through the
official `openai` client), /v1/models/{id}, /tokenize and /detokenize (vLLM's shapes), /version."""
from __future__ import annotations

from importlib import metadata

import httpx
import openai
import pytest

import labkit

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(default_llm_fp32):
    with labkit.serve(default_llm_fp32) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_response_equals_the_chat_reply_to_the_same_messages(client):
    response = client.responses.create(model=MODEL, instructions="Answer in one word.", input="Capital of France?",
                                       max_output_tokens=8, temperature=0)
    chat = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}])
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.output_text == chat.choices[0].message.content and response.output_text
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.status == ("completed" if chat.choices[0].finish_reason == "stop" else "incomplete")


def test_message_items_and_max_output_tokens(client):
    items = [{"role": "developer", "content": "You are a helpful assistant."},
             {"role": "user", "content": [{"type": "input_text",
                                           "text": "List the numbers from one to twenty, separated by commas."}]}]
    response = client.responses.create(model=MODEL, input=items, max_output_tokens=5, temperature=0)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5 and response.output_text


def test_streamed_response_sends_openais_events_in_order(client):
    kwargs = dict(model=MODEL, input="Say hello.", max_output_tokens=48, temperature=0)
    plain = client.responses.create(**kwargs)
    events = list(client.responses.create(stream=True, **kwargs))
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = "response.completed"  # the model says hello and stops well within 48 tokens
    assert plain.status == "completed"
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done", "response.output_item.done", final]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert deltas and "".join(deltas) == events[-1].response.output_text == plain.output_text
    assert events[-4].text == plain.output_text  # response.output_text.done
    assert events[0].response.status == "in_progress" and events[-1].response.usage.output_tokens \
        == plain.usage.output_tokens


def test_stateless_fields_and_hosted_tools_are_refused_by_name(client):
    for extra, param in (({"store": True}, "store"), ({"previous_response_id": "resp_1"}, "previous_response_id"),
                         ({"tools": [{"type": "web_search"}]}, "tools")):  # hosted tools: none here
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=MODEL, input="hi", **extra)
        assert caught.value.status_code == 400 and caught.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as caught:  # the chat path's check, in the Responses API's words
        client.responses.create(model=MODEL, input="hi", max_output_tokens=10**6)
    assert caught.value.body["param"] == "max_output_tokens"


def test_models_retrieve_and_unknown_id(client):
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.object == "model" and card.owned_by == "labkit"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert caught.value.body["code"] == "model_not_found"


def test_tokenize_round_trip_and_counts_equal_the_engine(server, client, default_llm_fp32):
    tokenizer = default_llm_fp32.tokenizer
    prompt = "The capital of France is Paris. Ünïcödé too!"
    body = httpx.post(server.url + "/tokenize", json={"model": MODEL, "prompt": prompt, "return_token_strs": True},
                      timeout=30).json()
    assert body["tokens"] == tokenizer(prompt)["input_ids"] and body["count"] == len(body["tokens"])
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])
    assert body["max_model_len"] == client.models.retrieve(MODEL).max_model_len
    back = httpx.post(server.url + "/detokenize", json={"model": MODEL, "tokens": body["tokens"]}, timeout=30)
    assert back.json() == {"prompt": prompt}
    messages = [{"role": "user", "content": "Capital of France?"}]
    chat = httpx.post(server.url + "/tokenize", json={"messages": messages}, timeout=30).json()
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert chat["count"] == reply.usage.prompt_tokens and chat["token_strs"] is None
    bare = httpx.post(server.url + "/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert bare["tokens"] == chat["tokens"][:bare["count"]] and bare["count"] < chat["count"]
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_version_is_the_installed_package(server):
    assert httpx.get(server.url + "/version").json() == {"version": metadata.version("labkit")}
