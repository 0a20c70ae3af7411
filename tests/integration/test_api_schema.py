"""schemathesis against the API's own OpenAPI document: generated requests to every
operation (an admin, so every route does its work) never get a 5xx, and every answer
matches the document's schema for its status."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from shared.api.app import PREFIX, create_api
from shared.api.auth import authenticate
from shared.api.permissions import Principal, Role
from tests.support.stageports import build_ports

CONFIG = {
    "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
    "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
}
api = create_api(build_ports(Path(tempfile.mkdtemp(prefix="axiom-schema-")), CONFIG))
api.dependency_overrides[authenticate] = lambda: Principal(user_id="schema", email="schema@example.org",
                                                           role=Role.ADMIN, via="api_key")
schema = schemathesis.openapi.from_asgi(f"{PREFIX}/openapi.json", api)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_answers_match_the_document(case):
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
