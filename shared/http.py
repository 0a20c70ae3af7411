"""HTTP endpoints served by ``axiom-flow serve`` (and, per endpoint, by Cloud
Functions): health, status, exception records, and STOW-RS (``shared/stow.py``);
the config API in a later issue."""

from __future__ import annotations

from typing import Callable

from flask import Flask, jsonify

from shared.secrets import Secrets


def create_app(status: Callable[[], dict], exceptions: Callable[[], list[dict]], *,
               stow_ports: object | None = None, secrets: Secrets | None = None) -> Flask:
    """``stow_ports``: the :class:`shared.stages.Ports` (or a callable returning them)
    STOW-RS stores with; None leaves ``/dicomweb/studies`` out."""
    app = Flask("axiom-flow")

    @app.get("/healthz")
    def healthz():
        return "ok\n", 200, {"Content-Type": "text/plain"}

    @app.get("/status")
    def status_view():
        return jsonify(status())

    @app.get("/exceptions")
    def exceptions_view():
        return jsonify(exceptions())

    if stow_ports is not None:
        from shared.stow import stow_blueprint

        app.register_blueprint(stow_blueprint(stow_ports, secrets))

    return app
