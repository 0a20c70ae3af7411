"""The API's frame: served under /api/v1 by serve's HTTP server, its OpenAPI document,
401 without credentials, and every route checking one permission of the role table
for every role (the role x route matrix)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from shared.api.app import PREFIX, ROUTERS, create_api, permission_of, served_routes
from shared.api.auth import authenticate
from shared.api.permissions import PERMISSIONS, Principal, Role
from shared.http import HttpServer, create_app
from tests.support.stageports import build_ports

# routes any authenticated caller may use (no permission beyond being someone)
ANY_PRINCIPAL = {("GET", f"{PREFIX}/me")}


@pytest.fixture
def ports(tmp_path):
    return build_ports(tmp_path, {})


def as_role(api, role: Role) -> TestClient:
    api.dependency_overrides[authenticate] = lambda: Principal(user_id="u1", email="u1@example.org", role=role,
                                                               via="api_key")
    return TestClient(api)


def api_routes(api) -> list[tuple[str, str, APIRoute]]:
    """Every (method, full path, route) of the routers in ROUTERS, as ``api`` serves them."""
    found = served_routes(ROUTERS)
    served = api.openapi()["paths"]
    assert {(m, p) for m, p, _ in found} == {(m.upper(), p) for p, ops in served.items() for m in ops}
    return found


route_permission = permission_of


def test_every_route_checks_one_permission_or_is_open_to_any_principal(ports):
    api = create_api(ports)
    for method, path, route in api_routes(api):
        assert route_permission(route) is not None or (method, path) in ANY_PRINCIPAL, (method, path)


@pytest.mark.parametrize("role", list(Role))
def test_role_by_route_matrix(ports, role):
    """Each route answers 403 exactly when the role lacks its permission (the route's
    own answer otherwise: any status but 401 and 403)."""
    api = create_api(ports)
    client = as_role(api, role)
    for method, path, route in api_routes(api):
        permission = route_permission(route)
        url = path.replace("{", "").replace("}", "")  # a path parameter named after itself
        status = client.request(method, url).status_code
        if permission is None or permission in PERMISSIONS[role]:
            assert status not in (401, 403), (role, method, path, status)
        else:
            assert status == 403, (role, method, path, status)


def test_me_says_who_and_what(ports):
    got = as_role(create_api(ports), Role.OPERATOR).get(f"{PREFIX}/me").json()
    assert got["role"] == "operator" and "exceptions:act" in got["permissions"]
    assert "config:write" not in got["permissions"]


def test_served_by_serve_http_server_with_its_document_and_401_without_credentials(ports):
    server = HttpServer(create_app(ports, status=dict, stow=False), "127.0.0.1", 0, max_request_body=1 << 20)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        doc = httpx.get(f"{base}{PREFIX}/openapi.json", headers={"Host": "localhost"})
        assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.1")
        assert f"{PREFIX}/me" in doc.json()["paths"]
        assert httpx.get(f"{base}{PREFIX}/docs", headers={"Host": "localhost"}).status_code == 200
        denied = httpx.get(f"{base}{PREFIX}/me", headers={"Host": "localhost"})
        assert denied.status_code == 401 and "Api-Key" in denied.headers["WWW-Authenticate"]
        assert httpx.get(f"{base}/healthz").status_code == 200  # the rest of the server as before
    finally:
        server.stop()


def test_the_document_carries_the_config_models_and_their_field_descriptions(ports):
    """The YAML import and export are described by AppConfig, whose models carry the
    descriptions of docs/config-reference.md."""
    from shared.config import Listener

    doc = create_api(ports).openapi()
    schemas = doc["components"]["schemas"]
    port = schemas["Listener"]["properties"]["port"]
    assert port["description"] == Listener.model_fields["port"].description and port["maximum"] == 65535
    assert schemas["AppConfig"]["properties"]["listeners"]["items"] == {"$ref": "#/components/schemas/Listener"}
    body = doc["paths"][f"{PREFIX}/config/import"]["post"]["requestBody"]["content"]["application/yaml"]
    assert body["schema"] == {"$ref": "#/components/schemas/AppConfig"}
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc))
    assert set(refs) <= set(schemas), "every schema referenced is in the document"


def test_the_openapi_document_names_each_operations_roles(tmp_path):
    from shared.api.app import create_api
    from tests.support.stageports import build_ports

    document = create_api(build_ports(tmp_path, {})).openapi()
    operations = [(path, method, op) for path, methods in document["paths"].items() for method, op in methods.items()]
    assert operations and all("x-roles" in op for _, _, op in operations)
    roles = {(path, method): op["x-roles"] for path, method, op in operations}
    assert "viewer" in roles[("/api/v1/spanner/qido/studies", "get")]
    assert "viewer" not in roles[("/api/v1/config/{kind}", "post")] and "admin" in roles[("/api/v1/config/{kind}", "post")]
    assert roles[("/api/v1/users", "post")] == ["admin"]
    spanner = document["paths"]["/api/v1/spanner/qido/studies"]["get"]
    assert spanner["x-permission"] == "spanner:query" and "Roles: admin" in spanner["description"]
