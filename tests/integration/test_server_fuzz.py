"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): whatever the body,
the server never answers 5xx, and its answers match what the document promises."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

import labkit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(tiny_model_dirs, default_encoder):
    llm = labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    with labkit.serve(llm, encoder=default_encoder) as server:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_makes_the_server_fail(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance], timeout=60)
