"""The config API: every config document (listeners, destinations, rulesets, schedules,
crosswalk tables, sources; the settings, default route and STOW-RS singletons) read,
created, replaced, patched (RFC 7386) and deleted; the whole config exported and
imported as YAML; and the rule test (a dry run on one uploaded instance).

Each write validates the whole config it would make (422 listing every problem),
lands only if nothing changed meanwhile (``If-Match`` against the ETag: 412), is
refused with 409 while something references what it deletes, and is written to the
audit log. See :mod:`shared.config.store`."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response
from pydantic import IPvAnyAddress

from shared.api.app import CONFIG_SCHEMA, PREFIX, get_ports
from shared.api.audit import record
from shared.api.auth import require
from shared.api.permissions import Permission, Principal
from shared.config import ConfigError, aliases
from shared.config.app import LIST_COLLECTIONS
from shared.config.store import SINGLETONS, ConfigStore, Conflict, NotFound, PreconditionFailed, address, etag, merge_patch
from shared.messages import SourceType
from shared.ports import Ports

router = APIRouter(tags=["config"])
READ, WRITE = require(Permission.CONFIG_READ), require(Permission.CONFIG_WRITE)
PAGE_MAX = 500
YAML = "application/yaml"
ConfigKind = Enum("ConfigKind", {k: k for k in LIST_COLLECTIONS}, type=str)
ERRORS = {404: {"description": "no such document"}, 409: {"description": "id taken, or still referenced"},
          412: {"description": "If-Match no longer matches: changed since read"},
          422: {"description": "the config it would make is invalid: every problem, with its location"}}


def _answer(call: Callable[[], Any]) -> Any:
    """``call()``, its store errors as HTTP answers."""
    try:
        return call()
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except Conflict as exc:
        raise HTTPException(409, {"error": str(exc), "references": exc.details}) from None
    except PreconditionFailed as exc:
        raise HTTPException(412, str(exc)) from None
    except ConfigError as exc:
        raise HTTPException(422, exc.problems) from None


def _document(doc: dict, response: Response) -> dict:
    response.headers["ETag"] = etag(doc)
    return doc


def _write(ports: Ports, principal: Principal, op: str, kind: str, doc_id: str,
           change: Callable[[dict | None], dict | None], if_match: str | None, response: Response) -> dict | None:
    collection, _ = address(kind)
    done = _answer(lambda: ConfigStore(ports.docs).write(collection, doc_id, change, if_match=if_match))
    target = f"{kind}/{doc_id}" if kind in LIST_COLLECTIONS else kind
    if done.before != done.after:
        record(ports, principal, f"config.{op}", target, before=done.before, after=done.after)
    return None if done.after is None else _document(done.after, response)


def _body_id(kind: str, body: dict) -> dict:
    """``body`` in canonical spelling (a ruleset may come in the seeds' spelling)."""
    if not isinstance(body, dict):
        raise HTTPException(422, [{"loc": [], "path": "", "msg": "the body must be a JSON object"}])
    return aliases.ruleset(body) if kind == "rulesets" else dict(body)


# --- the whole config (before /config/{kind}, which would take "export") -----------------


@router.get("/config/export", summary="The whole config as YAML", response_class=Response,
            responses={200: {"content": {YAML: {"schema": CONFIG_SCHEMA}}}})
def export_config(ports: Ports = Depends(get_ports), _: Principal = Depends(READ)) -> Response:
    text = ConfigStore(ports.docs).export_yaml()
    return Response(text, media_type=YAML, headers={"ETag": etag(text)})


@router.post("/config/import", summary="Replace the whole config with a YAML one, validated as one unit",
             responses={422: ERRORS[422]},
             openapi_extra={"requestBody": {"required": True, "content": {YAML: {"schema": CONFIG_SCHEMA}}}})
async def import_config(request: Request, dry_run: bool = Query(False, description="only answer the differences"),
                        ports: Ports = Depends(get_ports), principal: Principal = Depends(WRITE)) -> dict:
    body = await request.body()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise HTTPException(422, [{"loc": [], "path": "", "msg": "the body is not UTF-8 YAML"}]) from None
    store = ConfigStore(ports.docs)
    before = None if dry_run else store.export_yaml()
    changes = _answer(lambda: store.import_yaml(text, dry_run=dry_run, name="body"))
    if not dry_run and changes:
        record(ports, principal, "config.import", "config", before=before, after=store.export_yaml())
    return {"dry_run": dry_run, "written": not dry_run and bool(changes), "changes": changes}


# --- singletons --------------------------------------------------------------------------


def _singleton_routes(kind: str) -> None:
    collection, doc_id = address(kind)
    path = f"/config/{kind}"

    @router.get(path, summary=f"The {kind} document", name=f"get_{kind}")
    def get_one(response: Response, ports: Ports = Depends(get_ports), _: Principal = Depends(READ)) -> dict:
        return _document(_answer(lambda: ConfigStore(ports.docs).get(collection, doc_id)), response)

    @router.put(path, summary=f"Replace the {kind} document", name=f"replace_{kind}", responses=ERRORS)
    def replace_one(response: Response, body: dict[str, Any] = Body(...), if_match: str | None = Header(None),
                    ports: Ports = Depends(get_ports), principal: Principal = Depends(WRITE)) -> dict:
        body = _body_id(kind, body)
        return _write(ports, principal, "replace", kind, doc_id, lambda _: body, if_match, response)

    @router.patch(path, summary=f"Change fields of the {kind} document (JSON merge patch, RFC 7386)",
                  name=f"patch_{kind}", responses=ERRORS)
    def patch_one(response: Response, body: dict[str, Any] = Body(...), if_match: str | None = Header(None),
                  ports: Ports = Depends(get_ports), principal: Principal = Depends(WRITE)) -> dict:
        store = ConfigStore(ports.docs)
        return _write(ports, principal, "patch", kind, doc_id,
                      lambda current: merge_patch(current or store.get(collection, doc_id), body), if_match, response)


for _kind in SINGLETONS:
    _singleton_routes(_kind)


# --- list collections --------------------------------------------------------------------


@router.get("/config/{kind}", summary="List documents of a kind, by id")
def list_documents(kind: ConfigKind, response: Response, enabled: bool | None = None,
                   id_prefix: str | None = Query(None, description="only ids starting with this"),
                   type: str | None = Query(None, description="only this type (destinations, sources)"),
                   cursor: str | None = Query(None, description="next_cursor of the previous page"),
                   limit: int = Query(100, ge=1, le=PAGE_MAX), ports: Ports = Depends(get_ports),
                   _: Principal = Depends(READ)) -> dict:
    docs = ConfigStore(ports.docs).list(kind.value)
    items = [d for i, d in sorted(docs.items())
             if (enabled is None or d.get("enabled", True) == enabled) and (not id_prefix or i.startswith(id_prefix))
             and (type is None or d.get("type") == type) and (cursor is None or i > cursor)]
    page = items[:limit]
    response.headers["ETag"] = etag(page)
    return {"items": page, "next_cursor": page[-1]["id"] if len(items) > limit else None}


@router.get("/config/{kind}/{doc_id}", summary="One document", responses={404: ERRORS[404]})
def get_document(kind: ConfigKind, doc_id: str, response: Response, ports: Ports = Depends(get_ports),
                 _: Principal = Depends(READ)) -> dict:
    return _document(_answer(lambda: ConfigStore(ports.docs).get(kind.value, doc_id)), response)


@router.post("/config/{kind}", status_code=201, summary="Create a document (409 if its id exists)", responses=ERRORS)
def create_document(kind: ConfigKind, response: Response, body: dict[str, Any] = Body(...),
                    ports: Ports = Depends(get_ports), principal: Principal = Depends(WRITE)) -> dict:
    body = _body_id(kind.value, body)
    doc_id = body.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        raise HTTPException(422, [{"loc": ["id"], "path": "id", "msg": "a new document needs an id"}])

    def create(current):
        if current is not None:
            raise Conflict(f"{kind.value}/{doc_id} already exists")
        return body

    doc = _write(ports, principal, "create", kind.value, doc_id, create, None, response)
    response.headers["Location"] = f"{PREFIX}/config/{kind.value}/{doc_id}"
    return doc


@router.put("/config/{kind}/{doc_id}", summary="Replace a document", responses=ERRORS)
def replace_document(kind: ConfigKind, doc_id: str, response: Response, body: dict[str, Any] = Body(...),
                     if_match: str | None = Header(None), ports: Ports = Depends(get_ports),
                     principal: Principal = Depends(WRITE)) -> dict:
    body = _body_id(kind.value, body)
    if body.setdefault("id", doc_id) != doc_id:
        raise HTTPException(422, [{"loc": ["id"], "path": "id", "msg": f"the id in the body is not {doc_id!r}"}])

    def replace(current):
        if current is None:
            raise NotFound(f"no {kind.value} document {doc_id!r}")
        return body

    return _write(ports, principal, "replace", kind.value, doc_id, replace, if_match, response)


@router.patch("/config/{kind}/{doc_id}", summary="Change fields of a document (JSON merge patch, RFC 7386)",
              responses=ERRORS)
def patch_document(kind: ConfigKind, doc_id: str, response: Response, body: dict[str, Any] = Body(...),
                   if_match: str | None = Header(None), ports: Ports = Depends(get_ports),
                   principal: Principal = Depends(WRITE)) -> dict:
    def patch(current):
        if current is None:
            raise NotFound(f"no {kind.value} document {doc_id!r}")
        patched = merge_patch(current, body)
        if patched.get("id") != doc_id:
            raise HTTPException(422, [{"loc": ["id"], "path": "id", "msg": "the id cannot be changed"}])
        return patched

    return _write(ports, principal, "patch", kind.value, doc_id, patch, if_match, response)


@router.delete("/config/{kind}/{doc_id}", status_code=204, response_class=Response,
               summary="Delete a document (409 while something references it)", responses=ERRORS)
def delete_document(kind: ConfigKind, doc_id: str, if_match: str | None = Header(None),
                    ports: Ports = Depends(get_ports), principal: Principal = Depends(WRITE)) -> Response:
    _write(ports, principal, "delete", kind.value, doc_id, lambda _: None, if_match, Response())
    return Response(status_code=204)


# --- rule test ---------------------------------------------------------------------------


@router.post("/rules/test", summary="Dry-run the rules on one instance: matches, reasons, tag diff, destinations",
             tags=["rules"], responses={415: {"description": "not application/dicom or multipart with one"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/related": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/form-data": {"schema": {"type": "object",
                                                    "properties": {"file": {"type": "string", "format": "binary"}}}}}}})
async def test_rules(request: Request, calling_ae: str = "", called_ae: str = "",
                     source_ip: IPvAnyAddress | None = Query(None, description="as if sent from this IP address"),
                     source_type: SourceType = "cstore", source_id: str = "",
                     at: datetime | None = Query(None, description="evaluate schedules at this time (default: now)"),
                     ports: Ports = Depends(get_ports), _: Principal = Depends(require(Permission.RULES_TEST))) -> dict:
    from shared.dicomweb.multipart import MalformedMultipart, boundary_of, read_parts
    from shared.dryrun import dry_run
    from shared.messages import IngestMetadata
    from shared.stages import lookup_services

    body = await request.body()
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media.startswith("multipart/"):
        try:
            parts = read_parts(body, boundary_of(request.headers.get("content-type")))
        except MalformedMultipart as exc:
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        data = [p.data if p.data is not None else p.path.read_bytes() for p in parts]
        body = data[0] if data else b""
    elif media != "application/dicom":
        raise HTTPException(415, "send the instance as application/dicom, or multipart with one part")
    if not body:
        raise HTTPException(422, "no instance in the body")
    ingest = IngestMetadata(source_type=source_type, source_id=source_id, calling_ae=calling_ae,
                            called_ae=called_ae, peer_ip=str(source_ip or ""), **({"received_at": at} if at else {}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instance.dcm"
        path.write_bytes(body)
        config = ports.config()
        # the values looked up as the crosswalk stage would (from where this process runs)
        trace = dry_run(config, path, ingest, at=at, services=lookup_services(config, ports))
    trace["file"] = "upload"  # not the temporary path
    return json.loads(json.dumps(trace, default=str))
