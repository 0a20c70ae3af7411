"""The HTTPS API under ``/api/v1``: how operators configure and inspect Axiom Flow.

A FastAPI app (:func:`shared.api.app.create_api`) built from one router per resource;
every route names the permission it needs (:mod:`shared.api.permissions`), checked
against the caller's role. ``axiom-flow serve`` mounts it into its HTTP server
(``shared/http.py``); in GCP it is the ``api`` function. See docs/architecture.md,
"Config API"."""
