"""The API app: FastAPI, one router per resource, the OpenAPI document at
``/api/v1/openapi.json`` and its interactive page at ``/api/v1/docs``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler

from shared.api.permissions import PERMISSIONS, Permission, Role
from shared.config import AppConfig
from shared.ports import Ports

if TYPE_CHECKING:  # pragma: no cover
    from fastapi.routing import APIRoute

PREFIX = "/api/v1"
# the config models' JSON schemas are components of the OpenAPI document (their field
# descriptions are those of docs/config-reference.md); the YAML import and export name this one
CONFIG_SCHEMA = {"$ref": "#/components/schemas/AppConfig"}
# one router per resource, each module's ``router``; a route that checks no permission fails
# tests/unit/test_api.py
ROUTERS: tuple[str, ...] = (
    "shared.api.me",
    "shared.api.users_routes",
    "shared.api.audit_routes",
    "shared.api.config_routes",
    "shared.api.exceptions_routes",
    "shared.api.jobs",
    "shared.api.status_routes",
    "shared.api.spanner_routes",
)
# the spanner's own entry point on GCP (functions/api.py ``spanner``): its queries and who
# is asking, nothing else (it runs with the spanner's service account, not the API's)
SPANNER_ROUTERS: tuple[str, ...] = ("shared.api.me", "shared.api.spanner_routes")


def create_api(ports: Ports, *, version: str = "0", runtime_status: Callable[[], dict] | None = None,
               routers: Sequence[str] = ROUTERS) -> FastAPI:
    """The API over ``ports`` (the runtime's), served under :data:`PREFIX`.
    ``runtime_status``: what the runtime alone knows (the embedded one: queue depths,
    listener ports, child processes; :meth:`shared.runtime.local.EmbeddedRuntime.status`),
    shown as ``runtime`` by ``GET /status``; GCP has none. ``routers``: the modules
    whose routes it serves (a subset of :data:`ROUTERS`, e.g. :data:`SPANNER_ROUTERS`)."""
    import importlib

    api = FastAPI(title="Axiom Flow API", version=version, openapi_url=f"{PREFIX}/openapi.json",
                  docs_url=f"{PREFIX}/docs", redoc_url=None)
    api.state.ports = ports
    api.state.runtime_status = runtime_status
    api.add_exception_handler(HTTPException, _problems_as_documented)
    unknown = set(routers) - set(ROUTERS)
    if unknown:
        raise ValueError(f"not API routers: {sorted(unknown)}")
    for name in routers:
        router: APIRouter = importlib.import_module(name).router
        api.include_router(router, prefix=PREFIX)
    api.state.routers = tuple(routers)
    _with_config_schemas(api)
    return api


def served_routes(routers: Sequence[str]) -> list[tuple[str, str, "APIRoute"]]:
    """Every (method, full path, route) of ``routers``, read from the routers
    themselves: FastAPI 0.16x keeps an included router as one entry of ``api.routes``."""
    import importlib

    from fastapi.routing import APIRoute

    return [(method, f"{PREFIX}{route.path}", route) for name in routers
            for route in importlib.import_module(name).router.routes if isinstance(route, APIRoute)
            for method in sorted(route.methods)]


def permission_of(route: "APIRoute") -> Permission | None:
    """The permission a route's ``require(...)`` dependency checks; None: any caller
    who is someone."""
    found = [getattr(dep.call, "permission", None) for dep in route.dependant.dependencies]
    found = [p for p in found if p is not None]
    return found[0] if found else None


def _with_config_schemas(api: FastAPI) -> None:
    """Add AppConfig and every model it uses to the components of ``api``'s OpenAPI
    document: the config routes take and give plain JSON objects (a document of any
    kind, validated as part of the whole config), so FastAPI would not list them."""
    build = api.openapi

    def openapi() -> dict:
        if api.openapi_schema is None:
            document = build()
            schema = AppConfig.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, model_schema in {**schema.pop("$defs", {}), "AppConfig": schema}.items():
                if schemas.setdefault(name, model_schema) != model_schema:
                    raise RuntimeError(f"two OpenAPI schemas are named {name}: rename the API's model")
            _with_roles(api, document)
        return api.openapi_schema

    api.openapi = openapi


def _with_roles(api: FastAPI, document: dict) -> None:
    """Each operation says which permission it needs and which roles have it
    (``x-permission``, ``x-roles``, and a line of its description)."""
    for method, path, route in served_routes(api.state.routers):
        permission = permission_of(route)
        roles = [r.value for r in Role if permission is None or permission in PERMISSIONS[r]]
        operation = document.get("paths", {}).get(path, {}).get(method.lower())
        if operation is not None:
            operation["x-permission"] = permission.value if permission else None
            operation["x-roles"] = roles
            said = f"Roles: {', '.join(roles)}." if permission else "Any authenticated caller."
            operation["description"] = f"{operation.get('description', '')}\n\n{said}".strip()


async def _problems_as_documented(request: Request, exc: HTTPException):
    """Every 422 in the shape the OpenAPI document gives it (FastAPI's validation
    error: a list of ``{loc, msg, type}``), whether pydantic or a route found the
    problem; a route's extra fields (``path``) stay."""
    if exc.status_code == 422:
        found = exc.detail if isinstance(exc.detail, list) else [{"loc": [], "msg": str(exc.detail)}]
        exc = HTTPException(422, [{"type": "value_error", **p} if isinstance(p, dict) else
                                  {"loc": [], "msg": str(p), "type": "value_error"} for p in found], exc.headers)
    return await http_exception_handler(request, exc)


def get_ports(request: Request) -> Ports:
    """A route dependency: the runtime's ports."""
    return request.app.state.ports


def get_runtime_status(request: Request) -> Callable[[], dict] | None:
    """A route dependency: the runtime's own status, if it has one (see :func:`create_api`)."""
    return getattr(request.app.state, "runtime_status", None)
