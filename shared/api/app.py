"""The API app: FastAPI, one router per resource, the OpenAPI document at
``/api/v1/openapi.json`` and its interactive page at ``/api/v1/docs``."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler

from shared.ports import Ports

PREFIX = "/api/v1"
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
)


def create_api(ports: Ports, *, version: str = "0") -> FastAPI:
    """The API over ``ports`` (the runtime's), served under :data:`PREFIX`."""
    import importlib

    api = FastAPI(title="Axiom Flow API", version=version, openapi_url=f"{PREFIX}/openapi.json",
                  docs_url=f"{PREFIX}/docs", redoc_url=None)
    api.state.ports = ports
    api.add_exception_handler(HTTPException, _problems_as_documented)
    for name in ROUTERS:
        router: APIRouter = importlib.import_module(name).router
        api.include_router(router, prefix=PREFIX)
    return api


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
