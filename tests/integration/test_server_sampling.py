"""Sampling fields and outputs through the server with the official `openai` client, on the default model:
logprobs and top_logprobs, echo with prompt log-probabilities, n siblings on the prefix cache, batched prompts,
penalties and logit_bias, and 400s naming the field (caught as openai.BadRequestError)."""
from __future__ import annotations

import logging

import openai
import pytest
import torch


pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"
PROMPT = "The capital of France is"


def chat(openai_client, **fields):
    return openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}],
                                          **fields)


def test_chat_logprobs_and_top_logprobs(openai_client):
    reply = chat(openai_client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        tops = [t.logprob for t in item.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert item.logprob == pytest.approx(tops[0]) and item.token == item.top_logprobs[0].token  # greedy
        assert bytes(item.bytes).decode() == item.token and item.logprob <= 0
    assert "".join(item.token for item in content).startswith(reply.choices[0].message.content)
    plain = chat(openai_client, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None


def test_streamed_chat_carries_logprobs_for_every_token(openai_client):
    stream = chat(openai_client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True,
                  stream_options={"include_usage": True})
    items, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        if chunk.choices and chunk.choices[0].logprobs:
            items += chunk.choices[0].logprobs.content
    assert len(items) == usage.completion_tokens and all(len(i.top_logprobs) == 2 for i in items)


def test_echo_gives_the_prompt_log_probabilities_of_the_model(openai_client, default_llm_fp32):
    ids = default_llm_fp32.tokenizer(PROMPT)["input_ids"]
    reply = openai_client.completions.create(model=MODEL, prompt=ids, max_tokens=1, temperature=0, echo=True,
                                             logprobs=1)
    lp = reply.choices[0].logprobs
    assert reply.choices[0].text.startswith(default_llm_fp32.tokenizer.decode(ids))
    assert len(lp.tokens) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.inference_mode():
        reference = default_llm_fp32.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    for position in range(1, len(ids)):
        assert lp.token_logprobs[position] == pytest.approx(reference[position - 1, ids[position]].item(), abs=1e-3)
    assert lp.text_offset == sorted(lp.text_offset)


def test_n_choices_are_seeded_siblings_that_share_the_prompt_pages(openai_client):
    prompt = "Write one sentence about the sea. " * 24  # more than two 64-token KV pages
    fields = dict(model=MODEL, prompt=prompt, max_tokens=8, temperature=1.0, seed=-123456789, n=3)
    first = openai_client.completions.create(**fields)
    again = openai_client.completions.create(**fields)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1
    assert first.usage.prompt_tokens_details.cached_tokens >= 128  # the siblings took the prompt's pages


def test_batched_prompts_are_indexed_prompt_major(openai_client):
    prompts = ["One, two, three,", "Monday, Tuesday,"]
    reply = openai_client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    alone = [openai_client.completions.create(model=MODEL, prompt=p, max_tokens=4, temperature=0).choices[0].text
             for p in prompts]
    assert [c.text for c in reply.choices] == [alone[0], alone[0], alone[1], alone[1]]
    ids = openai_client.completions.create(model=MODEL, prompt=[[1, 2, 3], [4, 5]], max_tokens=2, temperature=0)
    assert len(ids.choices) == 2


def test_penalties_logit_bias_min_p_and_stop_token_ids_are_honoured(openai_client, default_llm_fp32):
    forced = default_llm_fp32.tokenizer.encode(" banana")[0]
    biased = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0,
                                       logit_bias={str(forced): 100})
    assert biased.choices[0].text == " banana" * 3
    stopped = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0,
                                        logit_bias={str(forced): 100}, extra_body={"stop_token_ids": [forced]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1
    fields = dict(model=MODEL, prompt="one two one two one two", max_tokens=8, temperature=0)
    plain = openai_client.completions.create(**fields, extra_body={"ignore_eos": True})
    penalized = openai_client.completions.create(**fields, presence_penalty=1.5, frequency_penalty=1.0,
                                          extra_body={"ignore_eos": True, "repetition_penalty": 1.5, "min_p": 0.1,
                                                      "top_k": -1})
    assert penalized.choices[0].text != plain.choices[0].text


@pytest.mark.parametrize("fields,param", [
    (dict(best_of=2, n=1), "best_of"),
    (dict(suffix="!"), "suffix"),
    (dict(logprobs=21), "logprobs"),
    (dict(n=17), "n"),
    (dict(seed=2**63), "seed"),
    (dict(logit_bias={"banana": 1}), "logit_bias"),
    (dict(logit_bias={"999999": 1}), "logit_bias"),
    (dict(logit_bias={"5": 101}), "logit_bias"),
    (dict(extra_body={"stop_token_ids": [10**6]}), "stop_token_ids"),
    (dict(extra_body={"top_k": -2}), "top_k"),
    (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty"),
    (dict(extra_body={"repetition_penalty": 1e-137}), "repetition_penalty"),
    (dict(extra_body={"min_p": 2}), "min_p"),
    (dict(prompt=["a"] * 40, n=2), "n"),
])
def test_bad_fields_are_400s_naming_them(openai_client, fields, param):
    fields = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.completions.create(**fields)
    assert err.value.status_code == 400 and err.value.body["param"] == param


def test_chat_top_logprobs_bounds_and_needs_logprobs(openai_client):
    for fields, param in ((dict(logprobs=True, top_logprobs=21), "top_logprobs"),
                          (dict(top_logprobs=2), "top_logprobs")):
        with pytest.raises(openai.BadRequestError) as err:
            chat(openai_client, max_tokens=2, **fields)
        assert err.value.body["param"] == param


def test_unknown_fields_are_accepted_and_logged_once(openai_client, caplog):
    with caplog.at_level(logging.WARNING, logger="labkit.server"):
        for _ in range(2):
            reply = chat(openai_client, max_tokens=2, extra_body={"labkit_test_unknown_field": 1})
            assert reply.choices[0].finish_reason in ("stop", "length")
    assert sum("labkit_test_unknown_field" in r.getMessage() for r in caplog.records) == 1


def test_streamed_choices_carry_their_index_and_match_the_plain_reply(openai_client):
    fields = dict(model=MODEL, prompt=["Red, green,", "North, south,"], n=2, max_tokens=4, temperature=0)
    plain = openai_client.completions.create(**fields)
    texts, finished = {}, set()
    for chunk in openai_client.completions.create(**fields, stream=True, echo=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2, 3}
    prompts = fields["prompt"]
    assert [texts[i] for i in range(4)] == [prompts[i // 2] + c.text for i, c in enumerate(plain.choices)]
