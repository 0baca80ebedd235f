"""/v1/responses bodies as chat requests, and the fields a stateless server refuses by name."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from labkit.server.errors import APIError, bad_request
from labkit.server.responses_api import (UNSUPPORTED, ResponseDraft, ResponsesRequest, chat_request,
                                         in_responses_terms, refuse_unsupported)

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


def test_items_and_parts_not_supported_yet_are_named():
    with pytest.raises(ValidationError, match="function_call_output"):
        ResponsesRequest(input=[{"type": "function_call_output", "call_id": "c", "output": "x"}])
    with pytest.raises(ValidationError, match="input_image"):
        ResponsesRequest(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])


@pytest.mark.parametrize("field,value", [
    ("store", True), ("previous_response_id", "resp_1"), ("conversation", "conv_1"), ("prompt", {"id": "p"}),
    ("tools", [{"type": "function", "name": "f"}]),
    ("tool_choice", "required"), ("text", {"format": {"type": "xml"}}), ("reasoning", {"effort": "low"}),
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
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": None}
    cut = draft.finished("a b c", "length", usage)
    assert cut["id"] == "resp_abc" and cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["output"][0]["content"][0] == {"type": "output_text", "text": "a b c", "annotations": [], "logprobs": []}
    assert cut["usage"]["input_tokens"] == 5 and cut["usage"]["output_tokens"] == 3
    assert draft.finished("done", "stop", usage)["status"] == "completed"
