"""Schemathesis against the API's own OpenAPI schema: every operation, generated valid and
invalid requests, and no answer may be a server error."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import ApiServer

TOKEN = "schema-token"


@pytest.fixture(scope="module")
def api_schema(standin, tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("schema-api"), RAG_LLM_BASE_URL=standin.base_url, RAG_API_TOKEN=TOKEN)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    schema.config.update(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    yield schema
    server.stop()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_with_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error], timeout=60)
