"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): whatever the body,
valid or not, the server never answers 5xx, and its answers match what the document promises."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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
def api_schema(tiny_model_dirs, default_encoder):
    llm = labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    with labkit.serve(llm, encoder=default_encoder) as server:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")


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
