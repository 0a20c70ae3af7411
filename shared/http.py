"""HTTP endpoints served by ``axiom-flow serve`` (and, per endpoint, by Cloud
Functions): health and status now; STOW-RS and the config API in later issues."""

from __future__ import annotations

from typing import Callable

from flask import Flask, jsonify


def create_app(status: Callable[[], dict], exceptions: Callable[[], list[dict]]) -> Flask:
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

    return app
