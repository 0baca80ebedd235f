"""Structured outputs through the engine on the real default model: greedy and sampled outputs under a JSON
schema, a choice and a regex always parse; a request ends when its grammar is complete; constrained and free
requests share a batch without changing each other; a constraint that does not compile is refused on entry."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from labkit import LLM, SamplingParams
from labkit.engine.structured_output import StructuredOutputError, StructuredOutputsParams

pytestmark = pytest.mark.integration

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def llm(default_llm_fp32):
    with LLM(default_llm_fp32) as engine:
        yield engine


def constrained(temperature: float = 0, seed: int | None = None, max_tokens: int = 48, **constraint) -> SamplingParams:
    return SamplingParams(temperature=temperature, seed=seed, max_tokens=max_tokens,
                          structured_outputs=StructuredOutputsParams(**constraint))


def test_greedy_and_sampled_outputs_follow_the_schema(llm):
    prompts = [chat("Describe a person as JSON.")] * 3 + [chat("Pick a word."), chat("Give a phone number.")]
    params = [constrained(json=PERSON), constrained(temperature=1.0, seed=1, json=PERSON),
              constrained(temperature=1.0, seed=2, json=PERSON),
              constrained(choice=("alpha", "beta", "gamma")), constrained(regex=r"\d{3}-\d{4}")]
    outs = llm.generate(prompts, params, use_tqdm=False)
    for out in outs[:3]:
        jsonschema.validate(json.loads(out.text), PERSON)
        assert out.finish_reason == "stop"
    assert outs[3].text in ("alpha", "beta", "gamma")
    assert re.fullmatch(r"\d{3}-\d{4}", outs[4].text)
    # the grammar ended it: the last token completed the match (no EOS needed, none appended)
    assert outs[4].token_ids[-1] not in llm.engine.eos_token_ids


def test_a_grammar_does_not_change_its_neighbours(llm):
    free = SamplingParams(temperature=0, max_tokens=20)
    [alone] = llm.generate([chat("Say hello.")], free, use_tqdm=False)
    mixed = llm.generate([chat("Say hello."), chat("Describe a person as JSON.")], [free, constrained(json=PERSON)],
                         use_tqdm=False)
    assert mixed[0].token_ids == alone.token_ids
    jsonschema.validate(json.loads(mixed[1].text), PERSON)


def test_json_object_and_compile_once(llm):
    manager = llm.engine.structured_output_manager()
    before = manager.num_compiled
    outs = llm.generate([chat("What is the capital of France? Answer in JSON.")] * 2,
                        constrained(json_object=True, max_tokens=64), use_tqdm=False)
    for out in outs:
        assert isinstance(json.loads(out.text), dict) and out.finish_reason == "stop"
    assert manager.num_compiled == before + 1


def test_a_constraint_that_does_not_compile_is_refused_on_entry(llm):
    with pytest.raises(StructuredOutputError, match="regex"):
        llm.generate([chat("x")], constrained(regex="(unclosed"), use_tqdm=False)
    assert llm.engine.num_waiting == 0 and llm.engine.num_running == 0
