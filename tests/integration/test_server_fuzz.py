"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): whatever the body,
valid or not, the server never answers 5xx, and its answers match what the document promises; and the
newer fields (structured outputs, tools, tool_choice, logprobs, n, Responses' items) fuzzed with values
that reach the grammar compiler, the tool parser and the engine."""
from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

import labkit

pytestmark = pytest.mark.integration
OPERATIONS = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"),
              ("POST", "/v1/responses"), ("POST", "/tokenize"), ("POST", "/detokenize"),
              ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"), ("GET", "/version"), ("GET", "/health"),
              ("GET", "/ready"), ("GET", "/metrics")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tiny_model_dirs, default_encoder):
    llm = labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    with labkit.serve(llm, encoder=default_encoder) as handle:
        yield handle


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_the_schema_lists_every_operation(api_schema):
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert set(OPERATIONS) <= listed


# Bodies valid and invalid for the POSTs; the GETs take no input, so only their one valid form.
CASES = [(m, p, mode) for m, p in OPERATIONS
         for mode in ([GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if m == "POST" else [GenerationMode.POSITIVE])]


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{p}-{mode.value}" for _, p, mode in CASES])
def test_no_input_makes_the_server_fail(api_schema, method, path, mode):
    operation = api_schema[path][method]
    examples = 1 if method == "GET" else 30

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(checks=CHECKS, timeout=60)

    fuzz()


# Random bodies from the document rarely hold a field's meaningful values, so the new fields get a strategy of
# their own: schemas (sound, odd and nested too deep), tools, every tool_choice, logprobs and n, merged into a
# valid body so each request reaches the grammar compiler, the tool parser and the engine.
_names = st.sampled_from(["f", "get_weather", "x.y-z"])
_leaf = st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null", "nonsense")]
                        + [{"enum": ["a", 1]}, {"type": "string", "pattern": '"/('}, {"$ref": "#/$defs/none"}])
_schemas = st.recursive(_leaf, lambda inner: st.one_of(
    st.builds(lambda p, r: {"type": "object", "properties": p, "required": r},
              st.dictionaries(st.text(max_size=4), inner, max_size=3), st.lists(st.text(max_size=4), max_size=2)),
    st.builds(lambda i: {"type": "array", "items": i, "maxItems": 2}, inner),
    st.builds(lambda a: {"anyOf": a}, st.lists(inner, min_size=1, max_size=2))), max_leaves=6) \
    | st.integers(60, 80).map(lambda d: _deep(d))
_formats = st.one_of(st.just({"type": "text"}), st.just({"type": "json_object"}),
                     st.builds(lambda s, strict: {"type": "json_schema", "json_schema": {"name": "x", "schema": s,
                                                                                          "strict": strict}},
                               _schemas, st.booleans()))
_structured = st.one_of(st.builds(lambda s: {"json": s}, _schemas), st.just({"regex": "(unclosed"}),
                        st.builds(lambda c: {"choice": c}, st.lists(st.text(max_size=5), min_size=1, max_size=3)),
                        st.just({"grammar": 'start: "a" | "b"'}), st.just({"json": "{" * 2000}))
_tools = st.lists(st.builds(lambda n, p, s: {"name": n, "parameters": p, "strict": s}, _names, _schemas,
                            st.booleans()), max_size=3)
_choices = st.one_of(st.sampled_from([None, "none", "auto", "required"]), _names)
_common = {"max_tokens": st.integers(1, 6), "temperature": st.sampled_from([0, 0.7]),
           "parallel_tool_calls": st.booleans(), "stream": st.booleans()}


def _deep(depth: int) -> dict:
    schema = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _chat_tool(tool, choice):
    tools = [{"type": "function", "function": t} for t in tool]
    named = {"type": "function", "function": {"name": choice}} if choice not in (None, "none", "auto", "required") else choice
    return {"tools": tools or None, "tool_choice": named}


_BODIES = {
    "/v1/chat/completions": st.fixed_dictionaries(
        {"messages": st.just([{"role": "user", "content": "Weather in Paris?"}]), **_common},
        optional={"response_format": _formats, "structured_outputs": _structured, "logprobs": st.booleans(),
                  "top_logprobs": st.integers(0, 21), "n": st.integers(1, 3),
                  "tool": st.tuples(_tools, _choices)}),
    "/v1/completions": st.fixed_dictionaries(
        {"prompt": st.just("The weather in Paris is"), **_common},
        optional={"response_format": _formats, "structured_outputs": _structured, "logprobs": st.integers(0, 21),
                  "echo": st.booleans(), "n": st.integers(1, 3)}),
    "/v1/responses": st.fixed_dictionaries(
        {"input": st.sampled_from(["Weather in Paris?", [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "21"}]]),
         "max_output_tokens": st.integers(1, 6), "stream": st.booleans(), "parallel_tool_calls": st.booleans()},
        optional={"tools": _tools.map(lambda ts: [{"type": "function", **t} for t in ts]),
                  "tool_choice": _choices.map(lambda c: c if c in (None, "none", "auto", "required")
                                              else {"type": "function", "name": c}),
                  "max_tool_calls": st.integers(1, 3), "text": _formats.map(lambda f: {"format": {
                      "type": f["type"], **f.get("json_schema", {})}})}),
}


@pytest.mark.parametrize("path", list(_BODIES))
def test_the_new_fields_never_make_the_server_fail(server, path):

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    @given(body=_BODIES[path])
    def fuzz(body):
        if "tool" in body:
            body.update(_chat_tool(*body.pop("tool")))
        body = {k: v for k, v in body.items() if v is not None}
        reply = httpx.post(server.url + path, json=body, timeout=60)
        assert reply.status_code < 500, (body, reply.text[:500])
        assert '"server_error"' not in reply.text, (body, reply.text[:500])  # nor an error inside a stream

    fuzz()
