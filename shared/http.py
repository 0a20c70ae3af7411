"""HTTP endpoints served by ``axiom-flow serve`` (and, per endpoint, by Cloud
Functions): health, status, exception records, and STOW-RS (``shared/stow.py``);
the config API in a later issue."""

from __future__ import annotations

from typing import Callable

from flask import Flask, jsonify, request

from shared.secrets import Secrets


def create_app(ports, status: Callable[[], dict], *, secrets: Secrets | None = None, stow: bool = True) -> Flask:
    """The embedded runtime's HTTP app over its :class:`shared.stages.Ports`.

    Exception records can be listed and retried here without authentication: the
    embedded server listens on 127.0.0.1 by default. Users and roles come with the
    config API."""
    from shared import stages

    app = Flask("axiom-flow")

    @app.get("/healthz")
    def healthz():
        return "ok\n", 200, {"Content-Type": "text/plain"}

    @app.get("/status")
    def status_view():
        return jsonify(status())

    @app.get("/exceptions")
    def exceptions_view():
        wanted = request.args.get("status")
        records = ports.docs.list(stages.EXCEPTIONS).values()
        return jsonify([r for r in records if wanted is None or r.get("status") == wanted])

    @app.post("/exceptions/<record_id>/retry")
    def retry_view(record_id: str):
        try:
            return jsonify(stages.retry_exception(ports, record_id))
        except stages.NotRetryable as exc:
            return jsonify({"error": str(exc)}), 404 if "no exception record" in str(exc) else 409

    if stow:
        from shared.stow import stow_blueprint

        app.register_blueprint(stow_blueprint(ports, secrets))

    return app
