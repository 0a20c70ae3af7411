"""``GET /status``: counters per listener, source and destination, with their last
errors (:mod:`shared.counters`: one document each, never the records), and under
``runtime`` what only the runtime knows (the embedded one: queues, deliveries being
sent, listener ports, free space, pollers, child processes, retention; absent in GCP);
``GET /health``: this process answers and its document store, bus and blob store can
be reached (503 naming the ones that cannot).

Both need ``status:read``: ``/health`` names what is down and why. A load balancer,
which has no key, probes ``/healthz`` (:mod:`shared.http`): unauthenticated, it says
``ok`` and nothing else."""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from shared import counters, exceptions
from shared.api.app import get_ports, get_runtime_status
from shared.api.auth import require
from shared.api.permissions import Permission, Principal
from shared.logs import describe_error
from shared.messages import TOPIC_INGEST, BlobRef
from shared.ports import Ports

log = logging.getLogger(__name__)

router = APIRouter(tags=["status"])
HEALTH_PROBE = ".axiom-health"  # a name looked up (never written) in the ingest bucket


def _counts(name: str, fields: tuple[str, ...], what: str) -> type[BaseModel]:
    """The model of one counters document (:func:`shared.counters.snapshot`)."""
    return create_model(
        name, __doc__=what, **{f: (int, ...) for f in fields},
        last_error=(str | None, Field(None, description="The last error counted, if any (ids, never PHI)")),
        last_error_at=(str | None, Field(None, description="When the last error was counted (ISO 8601, UTC)")))


ListenerCounts = _counts("ListenerCounts", counters.LISTENER_FIELDS, "A C-STORE listener's counters.")
SourceCounts = _counts("SourceCounts", counters.ORIGIN_FIELDS, "A source's counters (pollers, STOW-RS, buckets).")
DestinationCounts = _counts("DestinationCounts", (*counters.DESTINATION_FIELDS, "queued"),
                            "A destination's counters; queued: enqueued less what ended.")


class CrosswalkCounts(_counts("CrosswalkCountsBase", counters.CROSSWALK_FIELDS, "")):
    """A crosswalk map's lookups by the crosswalk stage: hits (the map had the key),
    misses, and cache hits (answered without asking its database)."""

    hit_rate: float | None = Field(description="hits / lookups; null before the first lookup")
    cache_hit_rate: float | None = Field(description="cache_hits / lookups; null before the first lookup")
    sync: dict[str, Any] | None = Field(None, description="A synced map's last sync: synced_at and started_at "
                                                          "(epoch seconds), last (rows added, changed, removed, "
                                                          "unchanged, skipped, read, seconds), error")


class StandardizerCounts(_counts("StandardizerCountsBase", counters.STANDARDIZER_FIELDS, "")):
    """The AI standardizer's answers: from its cache, from model calls (model_ms: their
    total milliseconds), or its fallback."""

    cache_hit_rate: float | None = Field(description="cache_hits / lookups; null before the first lookup")
    model_ms_mean: int | None = Field(description="Mean milliseconds of a model call; null before the first")
    model: str | None = Field(description="The model configured (settings.ai_standardizer); null: none")
    budget_left: int | None = Field(description="Model calls left in today's budget (UTC); null without a model")


class GatewayStatus(BaseModel):
    """The C-STORE gateway: free space against its floor, connections, listeners that cannot listen."""

    model_config = ConfigDict(extra="allow")
    free_bytes: int = Field(description="Free bytes under the data dir")
    min_free_bytes: int = Field(description="The floor (settings.min_free_bytes); 0: none")
    below_floor: bool = Field(description="True while new associations and C-STOREs are refused for lack of space")
    connections: int = Field(description="Associations open now, over every listener")
    listener_errors: dict[str, str] = Field(description="Why a listener cannot listen, by listener id")


class RetentionStatus(BaseModel):
    """The retention sweep since this process started."""

    model_config = ConfigDict(extra="allow")
    deleted: int
    bytes_freed: int
    kept_unsettled: int = Field(description="Objects past their age but not settled, at the last sweep")
    trash: int = Field(description="Objects in the trash now")
    last_sweep: str | None = Field(description="When the last sweep ran (ISO 8601), if it has")


class RuntimeStatus(BaseModel):
    """What the embedded runtime (``axiom-flow serve``) alone knows."""

    model_config = ConfigDict(extra="allow")
    queue: dict[str, int] = Field(description="Messages waiting, by topic")
    deliveries: dict[str, int] = Field(description="delivered (the destinations' delivered counters summed), "
                                                   "sending (claims being sent now), in_doubt")
    exceptions: int = Field(description="Exception records, archived included")
    listeners: dict[str, int | None] = Field(description="The port each listener listens on; null while it cannot")
    gateway: GatewayStatus
    sources: dict[str, dict[str, Any]] = Field(description="Per poller: its state, counters, last run and error")
    pipeline_processes: list[int] = Field(description="Process ids of the pipeline children alive")
    retention: RetentionStatus


class SpannerCounts(_counts("SpannerCountsBase", counters.SPANNER_FIELDS, "")):
    """A spanner's queries: answered from its cache, partial (a source did not answer),
    failed (fail_fast)."""

    cache_hit_rate: float | None = Field(description="cache_hits / queries; null before the first query")


class SpannerSourceCounts(_counts("SpannerSourceCountsBase", counters.SPANNER_SOURCE_FIELDS, "")):
    """A source asked by spanner queries: errors, timeouts, total milliseconds."""

    ms_mean: int | None = Field(description="Mean milliseconds of its answers; null before the first")


class StatusAnswer(BaseModel):
    listeners: dict[str, ListenerCounts]
    sources: dict[str, SourceCounts]
    destinations: dict[str, DestinationCounts]
    crosswalks: dict[str, CrosswalkCounts] = Field(description="Per crosswalk map, its lookups")
    standardizer: StandardizerCounts
    spanners: dict[str, SpannerCounts] = Field(description="Per spanner, its queries")
    spanner_sources: dict[str, SpannerSourceCounts] = Field(description="Per source asked by spanners, its answers")
    exceptions: int = Field(description="Exception records, archived included")
    held_deliveries: int = Field(description="Deliveries held for a disabled or missing destination")
    runtime: RuntimeStatus | None = Field(None, description="The runtime's own status; absent in GCP")


@router.get("/status", summary="Counters and last errors per listener, source, destination and crosswalk map; "
                               "the standardizer's; the runtime's own",
            response_model=StatusAnswer, response_model_exclude_unset=True)
def status(ports: Ports = Depends(get_ports), runtime_status=Depends(get_runtime_status),
           _: Principal = Depends(require(Permission.STATUS_READ))) -> dict:
    body = {**counters.snapshot(ports),
            "exceptions": ports.docs.count(exceptions.EXCEPTIONS),
            "held_deliveries": ports.docs.count(exceptions.HELD_DELIVERIES)}
    if runtime_status is not None:
        body["runtime"] = runtime_status()
    return body


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
