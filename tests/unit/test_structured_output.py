"""Structured outputs with the real default model: greedy decoding under a grammar bitmask always parses."""
from __future__ import annotations

import json
import re

import pytest
import torch

from labkit.engine.structured_output import StructuredOutputError, StructuredOutputManager, StructuredOutputsParams

pytestmark = pytest.mark.unit

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


@pytest.fixture(scope="module")
def llm(default_llm_fp32):
    return default_llm_fp32


@pytest.fixture(scope="module")
def manager(llm):
    width = llm.model.get_output_embeddings().weight.shape[0]  # the logits' width
    return StructuredOutputManager(llm.tokenizer, width)


def decode(llm, manager, params: StructuredOutputsParams, prompt: str, max_tokens: int = 40):
    """Greedy decoding of one chat prompt under `params`, with HF's KV cache: (text, matcher, stopped_by)."""
    tokenizer, model = llm.tokenizer, llm.model
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    inputs = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    matcher, cache, output = manager.compile(params), None, []
    with torch.inference_mode():
        for _ in range(max_tokens):
            result = model(input_ids=inputs, cache=cache, use_cache=True)
            cache, logits = result.cache, result.logits[:, -1, :].float().clone()
            manager.apply(logits, manager.fill_bitmask({0: matcher}, 1), [0])
            token = int(logits.argmax(dim=-1))
            assert matcher.accept(token), f"the grammar refused a token its own mask allowed: {token}"
            if token == tokenizer.eos_token_id:
                return tokenizer.decode(output), matcher, "eos"
            output.append(token)
            if matcher.is_terminated():
                return tokenizer.decode(output), matcher, "terminated"
            inputs = torch.tensor([[token]])
    return tokenizer.decode(output), matcher, "length"


def test_json_object_output_parses(llm, manager):
    text, matcher, stopped = decode(llm, manager, StructuredOutputsParams.from_response_format(
        {"type": "json_object"}), 'Return a JSON object with a single key "color" giving the color of the sky.')
    assert stopped != "length", text
    assert isinstance(json.loads(text), dict) and matcher.error is None


def test_json_schema_output_validates(llm, manager):
    params = StructuredOutputsParams.from_response_format(
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    text, _, stopped = decode(llm, manager, params, "Give the name and age of a famous scientist, as JSON.")
    assert stopped != "length", text
    value = json.loads(text)
    try:
        import jsonschema
    except ImportError:
        assert isinstance(value["name"], str) and type(value["age"]) is int, text
    else:
        jsonschema.validate(value, PERSON)


def test_choice_yields_exactly_one_choice(llm, manager):
    choices = ["positive", "negative", "neutral"]
    text, _, stopped = decode(llm, manager, StructuredOutputsParams(choice=choices),
                              "Is the sentiment of 'I love this movie' positive, negative or neutral?")
    assert text in choices and stopped == "terminated"


def test_regex_output_full_matches(llm, manager):
    pattern = r"\d{3}-\d{4}"
    text, _, stopped = decode(llm, manager, StructuredOutputsParams(regex=pattern), "Make up a phone number.")
    assert re.fullmatch(pattern, text) and stopped == "terminated", text


def test_a_grammar_compiles_once_and_each_request_gets_its_own_matcher(manager):
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
    compiled, hits = manager.num_compiled, manager.num_cache_hits
    first = manager.compile(StructuredOutputsParams(json=schema))
    second = manager.compile(StructuredOutputsParams(json=json.loads(json.dumps(schema))))  # equal, not the same
    assert (manager.num_compiled, manager.num_cache_hits) == (compiled + 1, hits + 1)
    brace = manager.tokenizer.tokenize_str("{")
    assert first.accept(brace[0])  # the first advances; the second still starts at the beginning
    rows = manager.fill_bitmask({0: first, 1: second}, 2)
    assert not torch.equal(rows[0], rows[1])


@pytest.mark.parametrize("params, kind, words", [
    (dict(json={"type": "objectx"}), "json", ["invalid JSON schema", "objectx"]),
    (dict(json="{not json"), "json", ["invalid JSON schema"]),
    (dict(regex="(("), "regex", ["invalid regex", "unclosed group"]),
    (dict(grammar="start: undefined_rule"), "grammar", ["invalid grammar", "undefined_rule"]),
])
def test_a_constraint_that_does_not_compile_is_a_clear_value_error(manager, params, kind, words):
    with pytest.raises(ValueError) as raised:
        manager.compile(StructuredOutputsParams(**params))
    assert isinstance(raised.value, StructuredOutputError) and raised.value.kind == kind
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_a_constraint_over_the_size_limit_is_refused(llm):
    small = StructuredOutputManager(llm.tokenizer, 49152, max_spec_chars=100)
    with pytest.raises(ValueError, match="over the limit of 100"):
        small.compile(StructuredOutputsParams(json={"type": "string", "description": "x" * 200}))


@pytest.mark.parametrize("bad", [dict(), dict(regex="a", choice=["a"]), dict(choice=[]), dict(choice="ab"),
                                 dict(json_object=False)])
def test_params_take_exactly_one_constraint(bad):
    with pytest.raises(ValueError):
        StructuredOutputsParams(**bad)


def test_response_format_maps_to_params():
    assert StructuredOutputsParams.from_response_format(None) is None
    assert StructuredOutputsParams.from_response_format({"type": "text"}) is None
    assert StructuredOutputsParams.from_response_format({"type": "json_object"}).json_object is True
    params = StructuredOutputsParams.from_response_format({"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON}})
    assert params.kind == "json" and json.loads(params.json) == PERSON
    with pytest.raises(ValueError, match="response_format.json_schema.schema"):
        StructuredOutputsParams.from_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(ValueError, match="response_format.type"):
        StructuredOutputsParams.from_response_format({"type": "xml"})


def test_bitmask_touches_only_constrained_rows_and_masks_ids_past_the_tokenizer(llm, manager):
    width = manager.vocab_size + 64  # an LM head wider than the tokenizer, as many models have
    wide = StructuredOutputManager(llm.tokenizer, width)
    assert wide.fill_bitmask({}, 4) is None  # no grammar in the batch: nothing to do
    logits = torch.randn(4, width)
    before = logits.clone()
    yes_no = wide.compile(StructuredOutputsParams(choice=["yes", "no"]))
    bitmask = wide.fill_bitmask({1: yes_no, 3: wide.compile(StructuredOutputsParams(regex="x+"))}, 4)
    wide.apply(logits, bitmask, [1, 3])  # rows 0 and 2 have no grammar
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    pieces = [llm.tokenizer.decode([t]) for t in allowed]  # what may start "yes" or "no"
    assert pieces and all(piece and ("yes".startswith(piece) or "no".startswith(piece)) for piece in pieces), pieces
    assert torch.equal(logits[1, allowed], before[1, allowed])
    only_x = torch.isfinite(logits[3]).nonzero().flatten().tolist()
    assert only_x and all(set(llm.tokenizer.decode([t])) == {"x"} for t in only_x)
    wide.apply(logits, wide.fill_bitmask({1: yes_no}, 2), [1])  # a run of rows takes the in-place path
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == allowed
    assert torch.isinf(logits[[1, 3], manager.vocab_size:]).all()


def test_gbnf_grammar_and_a_terminated_matcher_allows_only_eos(llm, manager):
    text, matcher, stopped = decode(llm, manager, StructuredOutputsParams(grammar='root ::= "yes" | "no"'),
                                    "Is the sky blue? Answer yes or no.")
    assert text in ("yes", "no") and stopped == "terminated"
    logits = torch.zeros(1, manager.vocab_size)
    manager.apply(logits, manager.fill_bitmask({0: matcher}, 1), [0])
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [llm.tokenizer.eos_token_id]


def test_a_schema_nested_too_deeply_is_refused_not_a_crash(manager):
    deep: dict = {"type": "string"}
    for _ in range(5000):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(StructuredOutputError, match="nested too deeply"):
        StructuredOutputsParams(json=deep)  # a dict: refused on creation
    text = "{}"
    for _ in range(1500):  # deeper than Python's recursion limit, within the size limit
        text = '{"type": "object", "properties": {"x": ' + text + "}}"
    with pytest.raises(StructuredOutputError, match="nested too deeply"):
        manager.compile(StructuredOutputsParams(json=text))  # JSON text: refused when compiled
