"""Exception records for operators: list with filters and pages, one record with its
attempts, and retry, release and archive of one record or of every record a filter
matches (a job: :mod:`shared.api.jobs`). Every action is in the audit log.

Filters (query parameters, the same for the list and the bulk actions): ``status``,
``stage``, ``destination_id``, ``reason`` (a part of it, any case), ``since`` and
``until`` (ISO 8601; naive means UTC; ``until`` excluded), ``archived`` (``false`` by
default, ``true``, ``any``). A value that is not one of these answers 400 naming it."""

from __future__ import annotations

from datetime import datetime
from typing import Callable
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request

from shared import exceptions
from shared.api import audit
from shared.api.app import get_ports
from shared.api.auth import require
from shared.api.jobs import start_job
from shared.api.permissions import Permission, Principal
from shared.exceptions import ExceptionFilter
from shared.ports import Ports

router = APIRouter(tags=["exceptions"])

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FILTERS = ("status", "stage", "destination_id", "reason", "since", "until", "archived")
# what a list shows of a record: UIDs, ids and reasons, not the message it would send
SUMMARY_FIELDS = ("id", "created_at", "stage", "status", "reason", "destination_id", "sop_instance_uid",
                  "attempt_count", "retries", "retried_at", "archived_at")

read = require(Permission.EXCEPTIONS_READ)
act = require(Permission.EXCEPTIONS_ACT)


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"{name} {value!r} is not an ISO 8601 time, e.g. 2026-05-01T14:30:00Z") from None


def _known_destination(ports: Ports, destination_id: str | None) -> None:
    """400 for a destination that is neither in the config nor named by any record (a
    destination removed from the config still has its records)."""
    if destination_id is None:
        return
    known = [d.id for d in ports.config().destinations]
    if destination_id not in known and not ports.docs.count(exceptions.EXCEPTIONS, {"destination_id": destination_id}):
        raise HTTPException(400, f"destination_id {destination_id!r} is not a destination of the config "
                                 f"({', '.join(known) or 'none'}) and no record names it")


def parse_filter(params, ports: Ports) -> ExceptionFilter:
    """The filter from query parameters; 400 naming an unknown parameter or value."""
    unknown = sorted(set(params) - set(FILTERS) - {"limit", "cursor", "all"})
    if unknown:
        raise HTTPException(400, f"unknown query parameter(s) {', '.join(unknown)}; filters are {', '.join(FILTERS)}")
    _known_destination(ports, params.get("destination_id"))
    archived = params.get("archived", "false")
    if archived not in ("false", "true", "any"):
        raise HTTPException(400, f"archived {archived!r} is not one of false, true, any")
    try:
        return ExceptionFilter(status=params.get("status"), stage=params.get("stage"),
                               destination_id=params.get("destination_id"), reason=params.get("reason"),
                               since=_time("since", params.get("since")), until=_time("until", params.get("until")),
                               archived={"false": False, "true": True, "any": None}[archived])
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def summary(record: dict) -> dict:
    got = {k: record.get(k) for k in SUMMARY_FIELDS}
    got["retryable"] = bool((record.get("retry") or {}).get("topic"))
    return got


def detail(record: dict) -> dict:
    """A record for one look: its summary, every kept attempt and what it is about."""
    extra = {k: v for k, v in record.items() if k not in SUMMARY_FIELDS and k != "retry"}
    return {**summary(record), **extra, "attempts": record.get("attempts") or [],
            "retry_topic": (record.get("retry") or {}).get("topic")}


@router.get("/exceptions", summary="Exception records, oldest first, filtered, a page at a time")
def list_exceptions(request: Request, ports: Ports = Depends(get_ports), _: Principal = Depends(read)) -> dict:
    params = request.query_params
    where = parse_filter(params, ports)
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise HTTPException(400, f"limit {raw_limit!r} is not a whole number from 1 to {MAX_LIMIT}")
    try:
        page, cursor = exceptions.find_exceptions(ports, where, limit=int(raw_limit), after=params.get("cursor"))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    next_url = None
    if cursor:
        query = {k: v for k, v in params.items() if k != "cursor"}
        next_url = f"{request.url.path}?{urlencode({**query, 'cursor': cursor})}"
    return {"items": [summary(r) for r in page], "count": len(page), "next_cursor": cursor, "next": next_url}


@router.get("/exceptions/{record_id}", summary="One exception record with its attempts")
def show_exception(record_id: str, ports: Ports = Depends(get_ports), _: Principal = Depends(read)) -> dict:
    return detail(_call(exceptions.get_exception, ports, record_id))


def _call(action: Callable[[Ports, str], dict], ports: Ports, record_id: str) -> dict:
    try:
        return action(ports, record_id)
    except exceptions.NoSuchRecord as exc:
        raise HTTPException(404, str(exc)) from None
    except exceptions.WrongState as exc:
        raise HTTPException(409, str(exc)) from None


ACTIONS: dict[str, Callable[[Ports, str], dict]] = {
    "retry": exceptions.retry_exception,
    "release": exceptions.release_exception,
    "archive": exceptions.archive_exception,
}


def _act(ports: Ports, principal: Principal, name: str, record_id: str, *, job_id: str | None = None) -> dict:
    """One action on one record, written to the audit log."""
    before = _call(exceptions.get_exception, ports, record_id)
    after = _call(ACTIONS[name], ports, record_id)
    audit.record(ports, principal, f"exceptions.{name}", f"exceptions/{record_id}",
                 before=summary(before), after={**summary(after), **({"job_id": job_id} if job_id else {})})
    return after


def _one(name: str):
    def endpoint(record_id: str, ports: Ports = Depends(get_ports), principal: Principal = Depends(act)) -> dict:
        return detail(_act(ports, principal, name, record_id))

    endpoint.__name__ = f"{name}_exception"
    return endpoint


def _bulk(name: str):
    def endpoint(request: Request, ports: Ports = Depends(get_ports), principal: Principal = Depends(act)) -> dict:
        where = parse_filter(request.query_params, ports)
        if where.is_empty() and request.query_params.get("all") != "true":
            raise HTTPException(400, f"{name} of every record needs all=true; or give a filter: "
                                     f"{', '.join(FILTERS)}")
        ids, total = exceptions.select_exceptions(ports, where)  # read page by page by the job
        about = {k: v for k, v in request.query_params.items()}

        def work(record_id: str, job_id: str) -> None:
            try:
                _act(ports, principal, name, record_id, job_id=job_id)
            except HTTPException as exc:  # as LookupError: the job keeps its text
                raise LookupError(f"{record_id}: {exc.detail}") from None

        job = start_job(ports, principal, f"exceptions.{name}", ids, work, total=total, about=about)
        return {**job, "url": f"{request.url.path.rsplit('/exceptions/', 1)[0]}/jobs/{job['id']}"}

    endpoint.__name__ = f"bulk_{name}"
    return endpoint


for _name, _what in (("retry", "Send a record's message again"),
                     ("release", "Send a held record's instance on now"),
                     ("archive", "Hide a record from default lists (it is kept)")):
    router.add_api_route(f"/exceptions/{{record_id}}/{_name}", _one(_name), methods=["POST"], summary=_what)
    router.add_api_route(f"/exceptions/{_name}", _bulk(_name), methods=["POST"], status_code=202,
                         summary=f"{_what}: every record the filters match, as a job (GET /jobs/{{id}})")
