"""STOW-RS over HTTP (PS3.18 10.5): the Flask handler, the blueprint of ``axiom-flow
serve`` and the body of the Cloud Function. A request refused from its headers alone
(disabled, no or a wrong API key, too large, a media type not taken) is answered before
its body is read; the transaction itself is :mod:`shared.inputs.stow.store`.

    POST {base}/dicomweb/studies                      (PS3.18 10.5.1)
    POST {base}/dicomweb/studies/{StudyInstanceUID}
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import IO, Callable

from flask import Blueprint, Request, Response, jsonify, request

from shared.inputs.stow.auth import CHALLENGE, ApiKeys, authenticate
from shared.inputs.stow.spool import READ_CHUNK, StowError, parse_content_type
from shared.inputs.stow.store import DICOM_JSON, store_instances
from shared.memo import PerObject
from shared.ports import Secrets

log = logging.getLogger(__name__)

DRAIN_MAX_BYTES = 8 * 1024 * 1024  # read and drop at most this much of a refused body
DRAIN_MAX_S = 5.0

_STUDIES_PATH = re.compile(r"(?:^|/)studies(?:/(?P<study>[^/]+))?/?$")
# the API keys read through each process's Secrets port, cached there
_keys_of: PerObject[Secrets, ApiKeys] = PerObject(ApiKeys, max_entries=4)


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    response = jsonify({"status": status, "error": message})
    response.status_code = status
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


def _drain(stream: IO[bytes]) -> None:
    """Read and drop (a bounded amount of) a refused body, so that a client still
    sending it gets to read our answer instead of a connection reset."""
    deadline = time.monotonic() + DRAIN_MAX_S
    left = DRAIN_MAX_BYTES
    try:
        while left > 0 and time.monotonic() < deadline:
            chunk = stream.read(min(READ_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
    except Exception:
        return


def refusal(req: Request, ports, *, keys: ApiKeys | None = None) -> Response | None:
    """The answer to a request that is refused from its headers alone, before any of
    its body is read: STOW-RS disabled (404), no or a wrong API key (401), keys
    unreadable (503), a Content-Length over ``stow.max_request_bytes`` (413), a media
    type this endpoint does not take (415, 400). None: read the body."""
    keys = keys or _keys_of(ports.secrets)
    config = ports.config()
    if not config.stow.enabled:
        return _error(404, "STOW-RS is disabled here (stow.enabled: false)")
    denied = authenticate(req.headers, config.stow, keys, ports.docs, req.remote_addr or "")
    if denied is not None:
        return _error(denied.status, denied.message, {"WWW-Authenticate": CHALLENGE} if denied.status == 401 else None)
    limit = config.stow.max_request_bytes
    try:
        if req.content_length is not None and req.content_length > limit:
            raise StowError(413, f"request body of {req.content_length} bytes is larger than the limit of"
                                 f" {limit} bytes (stow.max_request_bytes)")
        parse_content_type(req.headers.get("Content-Type"))
    except StowError as exc:
        log.warning("STOW-RS from %s refused: %d %s", req.remote_addr, exc.status, exc.message)
        return _error(exc.status, exc.message)
    return None


def handle_stow(req: Request, ports, *, study_uid: str | None = None, keys: ApiKeys | None = None) -> Response:
    """One STOW-RS request, from headers to response. ``ports``: a
    :class:`shared.ports.Ports` (or a callable returning one)."""
    ports = ports() if callable(ports) else ports
    keys = keys or _keys_of(ports.secrets)
    refused = refusal(req, ports, keys=keys)
    if refused is not None:
        _drain(req.stream)
        return refused
    config = ports.config()
    limit = config.stow.max_request_bytes
    try:
        result = store_instances(req.stream, req.headers.get("Content-Type"), ports, config=config,
                                 study_uid=study_uid, peer_ip=req.remote_addr or "", max_request_bytes=limit)
    except StowError as exc:
        log.warning("STOW-RS from %s refused: %d %s", req.remote_addr, exc.status, exc.message)
        _drain(req.stream)
        return _error(exc.status, exc.message)
    return Response(_json_bytes(result.to_json()), status=result.http_status, content_type=DICOM_JSON)


def _json_bytes(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def stow_http_function(req: Request, ports, *, keys: ApiKeys | None = None) -> Response:
    """The body of a functions-framework HTTP function: routes ``POST .../studies`` and
    ``POST .../studies/{StudyInstanceUID}`` (any prefix) to :func:`handle_stow`."""
    m = _STUDIES_PATH.search(req.path)
    if m is None:
        return _error(404, "not found: POST to .../studies or .../studies/{StudyInstanceUID}")
    if req.method != "POST":
        return _error(405, "method not allowed: STOW-RS takes POST", {"Allow": "POST"})
    return handle_stow(req, ports, study_uid=m.group("study"), keys=keys)


def stow_blueprint(ports: Callable[[], object] | object, url_prefix: str = "/dicomweb") -> Blueprint:
    """``POST {url_prefix}/studies[/{StudyInstanceUID}]`` for ``axiom-flow serve``.
    ``bp.early_answer(request)``: :func:`refusal` with this blueprint's keys, for a
    server that can answer before reading the body (``shared/http.py``)."""
    bp = Blueprint("stow", __name__, url_prefix=url_prefix)
    bp.early_answer = lambda req: refusal(req, ports() if callable(ports) else ports)

    @bp.post("/studies")
    def store():
        return handle_stow(request, ports)

    @bp.post("/studies/<study_uid>")
    def store_in_study(study_uid: str):
        return handle_stow(request, ports, study_uid=study_uid)

    return bp
