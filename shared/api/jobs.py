"""Bulk work as a job: started by a request, run in a thread of the serving process,
its progress a document (collection ``jobs``) that ``GET /jobs/{id}`` reads:
``total`` (null while unknown: the items are read as the job goes, see
:func:`start_job`), ``done`` (succeeded), ``failed`` (with the first errors), ``state``
(``running``, ``finished``). The document is written every :data:`WRITE_EVERY_S` and
at the end, not after each item. A job does not outlive its process: one whose
process stopped stays ``running`` (its items done so far are done)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Iterable

from fastapi import APIRouter, Depends, HTTPException

from shared.api.app import get_ports
from shared.api.auth import require
from shared.api.permissions import Permission, Principal
from shared.ports import Ports

log = logging.getLogger(__name__)

JOBS = "jobs"
WRITE_EVERY_S = 0.5
ERRORS_KEPT = 20

router = APIRouter(tags=["jobs"])


def start_job(ports: Ports, principal: Principal | None, action: str, items: Iterable[str],
              work: Callable[[str, str], None], *, total: int | None = None, about: dict | None = None) -> dict:
    """Run ``work(item, job_id)`` on each of ``items`` in a thread; returns the job
    document as written before the first item. ``items`` may be read lazily (pages of
    a query) by the job's thread; ``total`` is how many there are if known (a list's
    length by default), and what was done once the job finished. An item whose
    ``work`` raises counts as failed, with the error's text (the callers raise errors
    that name ids, never values)."""
    now = datetime.now(timezone.utc).isoformat()
    if total is None and isinstance(items, (list, tuple)):
        total = len(items)
    job = {"id": uuid.uuid4().hex, "action": action, "about": about or {}, "state": "running",
           "total": total, "done": 0, "failed": 0, "errors": [], "started_at": now, "finished_at": None,
           "user_id": principal.user_id if principal else None}
    ports.docs.set(JOBS, job["id"], job)
    threading.Thread(target=_run, args=(ports, dict(job), items, work), name=f"job-{job['id'][:8]}",
                     daemon=True).start()
    return job


def _run(ports: Ports, job: dict, items: Iterable[str], work: Callable[[str, str], None]) -> None:
    written = time.monotonic()
    try:
        _each(ports, job, items, work, written)
    except Exception:  # noqa: BLE001 - reading the items failed: the job ends, saying so
        log.exception("job %s: reading its items failed", job["id"])
        job["errors"] = [*job["errors"], {"item": None, "error": "reading the items failed"}][-ERRORS_KEPT:]
    job.update(state="finished", finished_at=datetime.now(timezone.utc).isoformat(),
               total=job["done"] + job["failed"])
    ports.docs.set(JOBS, job["id"], job)


def _each(ports: Ports, job: dict, items: Iterable[str], work: Callable[[str, str], None], written: float) -> None:
    for item in items:
        try:
            work(item, job["id"])
            job["done"] += 1
        except Exception as exc:  # noqa: BLE001 - one item's failure is reported, the rest go on
            job["failed"] += 1
            if len(job["errors"]) < ERRORS_KEPT:
                job["errors"].append({"item": item, "error": str(exc) if isinstance(exc, LookupError)
                                      else type(exc).__name__})
            if not isinstance(exc, LookupError):
                log.exception("job %s: %s failed on %s", job["id"], job["action"], item)
        if time.monotonic() - written >= WRITE_EVERY_S:
            ports.docs.set(JOBS, job["id"], job)
            written = time.monotonic()


@router.get("/jobs/{job_id}", summary="A bulk job's progress: total, done, failed, state")
def get_job(job_id: str, ports: Ports = Depends(get_ports),
            _: Principal = Depends(require(Permission.EXCEPTIONS_READ))) -> dict:
    job = ports.docs.get(JOBS, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job
