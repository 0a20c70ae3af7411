"""Cloud Functions entry points ``api``: the config API (:mod:`shared.api`), and
``spanner``: the same app with the spanner's routes only, on ASGI.

Its own entry module (the bundle's ``api.py``, deployed with the build environment
``GOOGLE_FUNCTION_SOURCE=api.py``) because functions-framework serves it on Starlette:
main.py's functions, on Flask, then never import Starlette (docs/architecture.md,
"Cold start"). Environment and logging as main.py.
"""

from __future__ import annotations

import functions_framework.aio

from shared.runtime import gcp

gcp.configure_logging()


class _ToApp:
    """What ``api`` answers: functions-framework awaits ``answer(scope, receive, send)``
    on it (as on a Starlette Response), which hands the request itself, body unread, to
    ``app``. The scope goes without the function route's own match (its ``{path}``)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        scope = {k: v for k, v in scope.items() if k not in ("path_params", "endpoint", "route")}
        await self.app(scope, receive, send)


@functions_framework.aio.http
async def api(request):
    """The config API (:mod:`shared.api`) at the function's URL + ``/api/v1/...``.

    ASGI end to end: functions-framework 3.9 serves a function decorated with
    ``functions_framework.aio.http`` on Starlette (uvicorn workers under gunicorn when
    deployed), found without flags, so the FastAPI app needs no WSGI bridge (a2wsgi,
    as ``serve`` needs for waitress). The app is built once per process over the GCP
    ports (:func:`shared.runtime.gcp.api`)."""
    return _ToApp(gcp.api())


@functions_framework.aio.http
async def spanner(request):
    """The spanner's QIDO-RS endpoints, async queries and data browser
    (:mod:`shared.api.spanner_routes`, and ``/me``) at the function's URL +
    ``/api/v1/...``: its own function so that only its service account reads the
    sources' credentials, reaches the PACS through the VPC connector and starts the
    Cloud Run job of async queries (``AXIOM_SPANNER_JOB``; docs/gcp-iam.md)."""
    return _ToApp(gcp.spanner_api())
