"""Status counters: per listener, per source and per destination, kept in a small
DocumentStore collection (``counters``, one document each) that the stages increment,
so ``GET /status`` reads one document per listener, source and destination and never
the records themselves. Both runtimes: the store's ``increment`` is atomic across
threads and processes (SQLite under its write lock, Firestore's server-side
increment).

Documents: ``listener:<id>`` (C-STORE listeners) and ``source:<id>`` (pollers, STOW-RS,
bucket and Healthcare API inputs) count ``received`` (match saw the instance),
``processed`` (planned to destinations), ``quarantined`` and ``held`` (no rule gave it
a destination); a listener also counts ``refused`` (associations its allow-lists
rejected: the gateway), and its last error says why, or that its port could not be
bound; ``destination:<id>`` counts ``enqueued`` (a delivery made by morph, or
sent again by a retry or release), ``delivered``, ``duplicate`` (already there:
acknowledged, not sent), ``failed`` (failed or refused: an exception record) and
``holds`` (held for a disabled or missing destination), and keeps ``held`` (held
now: up on a hold, down on its release, retry or archive). ``queued`` is derived:
enqueued less what ended (delivered, duplicate, failed, holds). Each document keeps
its last error and when.

Spanner queries (:func:`count_span`) count per spanner (``spanner:<id>``: queries,
cache hits, partial, failed) and per source asked (``spanner_source:<id>``: queries,
errors, timeouts, total ms); the snapshot adds the cache hit rate and the mean latency.

The crosswalk stage counts its lookups (:func:`count_lookups`): ``crosswalk:<table>``
counts ``lookups``, ``hits`` (the map had the key), ``misses``, ``cache_hits``
(answered from the map's cache, not its database) and ``errors`` (its database did not
answer: the plan waits; the last error says why); ``standardizer:ai`` counts
``lookups``, ``cache_hits``, ``model_calls`` with their total ``model_ms``,
``fallbacks``, ``deterministic`` (answers without a model configured) and ``errors``.
The snapshot adds the hit rates, the mean model latency, with a model configured the
calls left in today's budget, and for a synced map its last sync (``crosswalk_syncs``:
when, what changed, the error).

Counts are totals since the data dir (or the Firestore database) was new; a stage
message redelivered after a crash may count twice (the
stages are at-least-once), so they are for operators, not for accounting."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from shared.errors import LookupUnavailable
from shared.messages import IngestMetadata, Lookup
from shared.ports import DocumentStore, Ports

log = logging.getLogger(__name__)

COUNTERS = "counters"
ORIGIN_KINDS = ("listener", "source")
DESTINATION = "destination"
ORIGIN_FIELDS = ("received", "processed", "quarantined", "held")
LISTENER_FIELDS = (*ORIGIN_FIELDS, "refused")
DESTINATION_FIELDS = ("enqueued", "delivered", "duplicate", "failed", "holds", "held")
SPANNER = "spanner"
SPANNER_FIELDS = ("queries", "cache_hits", "partial", "failed")
SPANNER_SOURCE = "spanner_source"
SPANNER_SOURCE_FIELDS = ("queries", "errors", "timeouts", "ms")
CROSSWALK = "crosswalk"
CROSSWALK_FIELDS = ("lookups", "hits", "misses", "cache_hits", "errors")
STANDARDIZER = "standardizer:ai"
STANDARDIZER_FIELDS = ("lookups", "cache_hits", "model_calls", "model_ms", "fallbacks", "deterministic", "errors")


def origin_of(ingest: IngestMetadata | None) -> str:
    """The counters document of where an instance came from: its listener for C-STORE,
    else its source (STOW-RS, a poller, a bucket)."""
    if ingest is None:
        return "source:unknown"
    if ingest.source_type == "cstore":
        return listener(ingest.source_id or "unknown")
    return f"source:{ingest.source_id or ingest.source_type}"


def count(ports: Ports, counter: str, *, error: str | None = None, **counts: int) -> None:
    """Add ``counts`` to the counters document ``counter`` (``destination:pacs``,
    ``listener:main``, ...), with ``error`` as its last error. A counter that cannot be
    written is logged, never raised: counting must not fail a stage."""
    count_in(ports.docs, counter, error=error, **counts)


def count_in(docs: DocumentStore, counter: str, *, error: str | None = None, **counts: int) -> None:
    """:func:`count` for a caller with a document store and no ports (the gateway)."""
    count_many(docs, {counter: (counts, error)})


def count_many(docs: DocumentStore, changes: dict[str, tuple[dict[str, int], str | None]]) -> None:
    """Several counters (counter -> (counts, last error or None)) in one write."""
    at = datetime.now(timezone.utc).isoformat()
    try:
        docs.increment_many(COUNTERS, {counter: (counts, {"last_error": error, "last_error_at": at} if error else None)
                                       for counter, (counts, error) in changes.items()})
    except Exception:  # noqa: BLE001 - the stage's own work is done or recorded already
        log.exception("status counters %s not updated", ", ".join(changes))


def destination(destination_id: str) -> str:
    return f"{DESTINATION}:{destination_id}"


def listener(listener_id: str) -> str:
    return f"listener:{listener_id}"


def count_lookups(ports: Ports, actions: list[dict], lookups: list[Lookup]) -> None:
    """Count what the crosswalk stage looked up for one plan (``lookups`` indexes
    ``actions``): each crosswalk table's counter and the standardizer's, in one write."""
    totals: dict[str, dict[str, int]] = {}
    for lookup in lookups:
        if actions[lookup.action].get("action") == "crosswalk":
            got = totals.setdefault(f"{CROSSWALK}:{actions[lookup.action].get('table')}", dict.fromkeys(CROSSWALK_FIELDS, 0))
            got["hits" if lookup.source == "table" else "misses"] += 1
            got["cache_hits"] += lookup.cached
        else:
            got = totals.setdefault(STANDARDIZER, dict.fromkeys(STANDARDIZER_FIELDS, 0))
            got[{"cache": "cache_hits", "model": "model_calls", "fallback": "fallbacks",
                 "deterministic": "deterministic"}[lookup.source]] += 1
            got["model_ms"] += lookup.latency_ms or 0
        got["lookups"] += 1
    count_many(ports.docs, {counter: ({k: v for k, v in counts.items() if v}, None)
                            for counter, counts in totals.items()})


def count_span(docs: DocumentStore, spanner_id: str, statuses: list[dict], *, cached: bool = False,
               failed: bool = False) -> None:
    """One spanner query: ``spanner:<id>`` counts ``queries``, ``cache_hits``,
    ``partial`` (a source did not answer) and ``failed`` (fail_fast's error);
    ``spanner_source:<id>`` each source's ``queries``, ``errors``, ``timeouts`` and their
    total ``ms``, its last error kept."""
    missing = [s for s in statuses if s["state"] != "ok"]
    changes = {f"{SPANNER}:{spanner_id}": ({"queries": 1, "cache_hits": int(cached),
                                             "partial": int(bool(missing) and not failed), "failed": int(failed)}, None)}
    for status in statuses:
        error = f"{status['state']}: {status['error']}" if status["state"] != "ok" else None
        changes[f"{SPANNER_SOURCE}:{status['source']}"] = (
            {"queries": 1, "errors": int(status["state"] == "failed"), "timeouts": int(status["state"] == "timeout"),
             "ms": int(status.get("ms") or 0)}, error)
    count_many(docs, changes)


def count_lookup_error(ports: Ports, exc: LookupUnavailable) -> None:
    """A lookup that could not be made now: one more ``errors`` of the map (or of the
    standardizer), with the reason as its last error."""
    counter = f"{CROSSWALK}:{exc.table}" if exc.table is not None else STANDARDIZER
    count(ports, counter, errors=1, error=str(exc))


def snapshot(ports: Ports) -> dict[str, dict[str, dict]]:
    """Every counters document by kind and id: ``{"listeners": {id: {...}}, "sources":
    ..., "destinations": ...}``, with every field present (0 when never counted) and
    ``queued`` for a destination (enqueued, not yet delivered, failed or held). Reads
    the counters collection only: one document per listener, source and destination."""
    config = ports.config()
    out: dict[str, dict[str, dict]] = {"listeners": {}, "sources": {}, "destinations": {}, "crosswalks": {},
                                       "spanners": {}, "spanner_sources": {}}
    for lsn in config.listeners:  # configured ones show up before their first instance
        out["listeners"][lsn.id] = _with_fields({}, LISTENER_FIELDS)
    for src in config.sources:
        out["sources"][src.id] = _with_fields({}, ORIGIN_FIELDS)
    for dest in config.destinations:
        out["destinations"][dest.id] = _destination({})
    for table in config.crosswalks:
        out["crosswalks"][table.id] = _crosswalk({})
    synced = {table.id for table in config.crosswalks if table.synced}
    standardizer: dict = {}
    for doc_id, doc in ports.docs.list(COUNTERS).items():
        kind, _, name = doc_id.partition(":")
        if doc_id == STANDARDIZER:
            standardizer = doc
        elif kind == CROSSWALK:
            out["crosswalks"][name] = _crosswalk(doc)
        elif kind == SPANNER:
            got = _with_fields(doc, SPANNER_FIELDS)
            out["spanners"][name] = {**got, "cache_hit_rate": _rate(got["cache_hits"], got["queries"])}
        elif kind == SPANNER_SOURCE:
            got = _with_fields(doc, SPANNER_SOURCE_FIELDS)
            out["spanner_sources"][name] = {**got, "ms_mean": round(got["ms"] / got["queries"]) if got["queries"] else None}
        elif kind == DESTINATION:
            out["destinations"][name] = _destination(doc)
        elif kind in ORIGIN_KINDS:
            out[f"{kind}s"][name] = _with_fields(doc, LISTENER_FIELDS if kind == "listener" else ORIGIN_FIELDS)
    out["standardizer"] = _standardizer(standardizer, ports, config)
    if synced:
        from shared.crosswalk_sync import sync_state

        for map_id in synced:
            state = sync_state(ports.docs, map_id) or {}
            out["crosswalks"].setdefault(map_id, _crosswalk({}))["sync"] = {
                "synced_at": state.get("synced_at"), "started_at": state.get("started_at"),
                "last": state.get("last"), "error": state.get("error")}
    return out


def _with_fields(doc: dict, names: tuple[str, ...]) -> dict:
    return {**{n: int(doc.get(n) or 0) for n in names}, "last_error": doc.get("last_error"),
            "last_error_at": doc.get("last_error_at")}


def _destination(doc: dict) -> dict:
    got = _with_fields(doc, DESTINATION_FIELDS)
    finished = got["delivered"] + got["duplicate"] + got["failed"] + got["holds"]
    got["queued"] = max(0, got["enqueued"] - finished)
    return got


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _crosswalk(doc: dict) -> dict:
    got = _with_fields(doc, CROSSWALK_FIELDS)
    return {**got, "hit_rate": _rate(got["hits"], got["lookups"]), "cache_hit_rate": _rate(got["cache_hits"], got["lookups"])}


def _standardizer(doc: dict, ports: Ports, config) -> dict:
    got = _with_fields(doc, STANDARDIZER_FIELDS)
    got["cache_hit_rate"] = _rate(got["cache_hits"], got["lookups"])
    got["model_ms_mean"] = round(got["model_ms"] / got["model_calls"]) if got["model_calls"] else None
    settings = config.settings.ai_standardizer
    got["model"] = settings.model if settings is not None else None
    if settings is not None:
        from shared.vertex_standardizer import budget_left  # imported for a configured model only

        got["budget_left"] = budget_left(ports.docs, settings)
    else:
        got["budget_left"] = None
    return got
