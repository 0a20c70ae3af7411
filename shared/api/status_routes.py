"""``GET /status``: counters per listener, source and destination, with their last
errors (:mod:`shared.counters`: one document each, never the records); ``GET /health``:
this process answers and its document store, bus and blob store can be reached (503
naming the ones that cannot)."""

from __future__ import annotations

import logging
from typing import Callable

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from shared import counters, exceptions
from shared.api.app import get_ports
from shared.api.auth import require
from shared.api.permissions import Permission, Principal
from shared.logs import describe_error
from shared.messages import TOPIC_INGEST, BlobRef
from shared.ports import Ports

log = logging.getLogger(__name__)

router = APIRouter(tags=["status"])
HEALTH_PROBE = ".axiom-health"  # a name looked up (never written) in the ingest bucket


@router.get("/status", summary="Counters and last errors per listener, source and destination")
def status(ports: Ports = Depends(get_ports), _: Principal = Depends(require(Permission.STATUS_READ))) -> dict:
    return {**counters.snapshot(ports),
            "exceptions": ports.docs.count(exceptions.EXCEPTIONS),
            "held_deliveries": ports.docs.count(exceptions.HELD_DELIVERIES)}


def _bus_check(ports: Ports) -> Callable[[], object] | None:
    bus = ports.bus
    if hasattr(bus, "pending"):  # the local queue: a count on its database
        return lambda: bus.pending(TOPIC_INGEST)
    if hasattr(bus, "check"):
        return bus.check
    return None


def health_checks(ports: Ports) -> dict[str, Callable[[], object] | None]:
    """What ``GET /health`` tries, by name; None: this runtime's adapter has no probe."""
    return {
        "documents": lambda: ports.docs.get("health", "probe"),
        "blobs": lambda: ports.blobs.exists(BlobRef(bucket=ports.config().settings.ingest_bucket, name=HEALTH_PROBE)),
        "bus": _bus_check(ports),
    }


@router.get("/health", summary="Liveness and whether the stores and the bus can be reached (503 if not)")
def health(ports: Ports = Depends(get_ports), _: Principal = Depends(require(Permission.STATUS_READ))):
    checks: dict[str, dict] = {}
    for name, probe in health_checks(ports).items():
        if probe is None:
            checks[name] = {"ok": True, "checked": False}
            continue
        try:
            probe()
            checks[name] = {"ok": True, "checked": True}
        except Exception as exc:  # noqa: BLE001 - any failure means the dependency is down
            log.warning("health: %s unreachable: %s", name, describe_error(exc))
            checks[name] = {"ok": False, "checked": True, "error": describe_error(exc)}
    down = sorted(n for n, c in checks.items() if not c["ok"])
    body = {"status": "down" if down else "ok", "down": down, "checks": checks}
    return JSONResponse(body, status_code=503 if down else 200)
