"""Database crosswalk maps copied into the document store on a schedule (a map's
``sync``), so that their lookups are answered there and a database outage does not stop
routing.

A sync reads the whole table (``SELECT keys..., value``, streamed in batches; nothing
bound comes from outside the config) and writes one document per key into
:data:`ROWS`, then deletes the documents of keys no longer in the table. Keys are often
PHI (a Patient ID): a document's id is a keyed hash (HMAC-SHA256 with a random salt of
the map) of the map and its normalized keys, never the keys themselves, and no key
is logged. The document holds the value only.

Each map's state is one document of :data:`SYNCS` (id: the map id): its salt, when the
last sync started and finished, its report, the error of a failed one, and the shape
(source, table, columns, case) of the last complete sync. Lookups are served from the
copy once a sync of the map's current shape has completed
(:class:`shared.adapters.crosswalk_databases.DatabaseCrosswalk`); before that they
query the database.

The table is read whole (compared with the copy as it streams) before anything is
written: a database failure during a sync writes and deletes nothing, the copy stays
as the previous sync left it, and the error is recorded in the map's state (the next
sync tries again). Only rows added or changed are written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from shared.errors import RetryLater, SecretError

if TYPE_CHECKING:  # pragma: no cover (SQLAlchemy is imported where a sync runs: status reads this module)
    from sqlalchemy.engine import Engine

    from shared.config import AppConfig, CrosswalkTable
    from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)

ROWS = "crosswalk_rows"  # one document per key of a synced map
SYNCS = "crosswalk_syncs"  # one document per synced map: salt, last sync, error
PAGE = 1000  # documents read at a time when listing a map's rows
# how often the embedded runtime looks for maps due for a sync
CHECK_EVERY_S = 10.0

Progress = Callable[[int, "int | None"], None]


def normalized_keys(spec: "CrosswalkTable", keys: Sequence[str]) -> tuple[str, ...]:
    """The keys as a map compares them: case-folded for a ``case_insensitive`` map.
    The one normalization of the lookup cache, the synced rows and their lookups."""
    return tuple(k.casefold() for k in keys) if spec.case_insensitive else tuple(keys)


def shape(spec: "CrosswalkTable") -> str:
    """What a synced copy was read from and how its keys are normalized: a copy of
    another shape (the config changed) is not served."""
    parts = [spec.source, spec.schema_, spec.table, list(spec.keys), spec.value, spec.case_insensitive]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _map_tag(map_id: str) -> str:
    # a fixed-width prefix of every row id of a map: its rows are one id range
    return hashlib.sha256(map_id.encode()).hexdigest()[:16]


def row_id(map_id: str, salt: str, keys: tuple[str, ...]) -> str:
    """The document id of a synced row: the map's tag, then an HMAC of its normalized
    keys (never the keys: they are PHI)."""
    digest = hmac.new(bytes.fromhex(salt), json.dumps([map_id, list(keys)]).encode(), hashlib.sha256)
    return f"{_map_tag(map_id)}-{digest.hexdigest()}"


def _row_range(map_id: str) -> tuple[str, str]:
    tag = _map_tag(map_id)
    return f"{tag}-", f"{tag}."  # "." follows "-": every id of the map, and no other's


def synced_salt(docs: "DocumentStore", spec: "CrosswalkTable") -> str | None:
    """The salt of the map's copy if a sync of its current shape has completed (the
    copy can answer lookups), else None."""
    state = docs.get(SYNCS, spec.id)
    if state and state.get("synced_at") is not None and state.get("shape") == shape(spec):
        return state["salt"]
    return None


def synced_value(docs: "DocumentStore", spec: "CrosswalkTable", salt: str, keys: Sequence[str]) -> str | None:
    """The value of ``keys`` in the map's copy, None when it has no such row."""
    doc = docs.get(ROWS, row_id(spec.id, salt, normalized_keys(spec, keys)))
    return None if doc is None else doc.get("value")


@dataclass
class SyncReport:
    """What one sync of a map did."""

    map: str
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    rows_read: int = 0
    skipped: int = 0  # rows with a NULL key or value, or a key already read (after normalization)
    total: int | None = None  # the table's row count at the start (COUNT)
    seconds: float = 0.0
    finished_at: str | None = None
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.map}: sync failed: {self.error}"
        return (f"{self.map}: {self.rows_read} row(s) read, {self.added} added, {self.changed} changed, "
                f"{self.removed} removed, {self.unchanged} unchanged, {self.skipped} skipped "
                f"in {self.seconds:.1f} s")


def _state(docs: "DocumentStore", spec: "CrosswalkTable") -> dict[str, Any]:
    """The map's state document, created with a new salt on the first sync."""
    docs.create(SYNCS, spec.id, {"map": spec.id, "salt": secrets.token_hex(32)})  # only one salt wins
    return docs.get(SYNCS, spec.id)


def _existing_rows(docs: "DocumentStore", map_id: str) -> dict[str, Any]:
    """Id -> value of every row of the map's copy, a page at a time (an id range)."""
    first, beyond = _row_range(map_id)
    rows: dict[str, Any] = {}
    after = None
    while True:
        page = docs.query(ROWS, at_least=first, below=beyond, after=after, limit=PAGE)
        rows.update((doc_id, doc.get("value")) for doc_id, doc in page)
        if len(page) < PAGE:
            return rows
        after = (page[-1][0], page[-1][0])


def _engine(crosswalk_or_engine: Any, spec: "CrosswalkTable") -> "Engine":
    from sqlalchemy.engine import Engine

    if isinstance(crosswalk_or_engine, Engine):
        return crosswalk_or_engine
    return crosswalk_or_engine.engine(spec.source)  # a DatabaseCrosswalk: its pooled engine


def _read_table(engine: "Engine", spec: "CrosswalkTable", batch: int,
                counted: Callable[[int | None], None]) -> Iterator[list[tuple]]:
    """The table's (keys..., value) rows, ``batch`` at a time, streamed (a server-side
    cursor where the driver has one); the row count first, through ``counted``."""
    from sqlalchemy import column, func, select, table

    source = table(spec.table, schema=spec.schema_)
    with engine.connect() as conn:
        # one transaction (the engine autocommits lookups): count and rows of one snapshot,
        # and PostgreSQL's server-side cursor needs one
        conn.execution_options(isolation_level="REPEATABLE READ")
        counted(conn.execute(select(func.count()).select_from(source)).scalar())
        statement = select(*(column(k) for k in spec.keys), column(spec.value)).select_from(source)
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(statement)
        for partition in result.partitions(batch):
            yield partition


# What a refused login says, per driver: PostgreSQL (SQLSTATE class 28, or psycopg's
# message before a session exists), MySQL/MariaDB (error 1045), SQL Server (18456)
_LOGIN_REFUSED = ("password authentication failed", "access denied for user", "login failed for user")


def source_failure(source_id: str, exc: BaseException) -> str:
    """Why a crosswalk source failed, for logs and records: a refused login told apart
    from a server that does not answer, the error named by its type only (a driver's
    message may quote a value)."""
    if isinstance(exc, (RetryLater, SecretError)):
        return str(exc)  # ours: names the source or the secret reference, never a value
    cause = getattr(exc, "orig", None) or exc
    code = cause.args[0] if cause.args and isinstance(cause.args[0], int) else None
    refused = (str(getattr(cause, "sqlstate", "") or "").startswith("28") or code in (1045, 18456)
               or any(text in str(cause).lower() for text in _LOGIN_REFUSED))
    what = "refused the login (check the source's user and password)" if refused else "did not answer"
    return f"crosswalk source {source_id!r} {what} ({type(cause).__name__})"


def _describe(spec: "CrosswalkTable", exc: BaseException) -> str:
    return source_failure(spec.source, exc)


def sync_map(docs: "DocumentStore", crosswalk_or_engine: Any, spec: "CrosswalkTable",
             progress: Progress | None = None, *, now: float | None = None) -> SyncReport:
    """Copy the whole table of ``spec`` (a ``table`` map) into the document store and
    return what changed; ``progress(rows done, total or None)`` after each batch.
    ``crosswalk_or_engine``: a :class:`~shared.adapters.crosswalk_databases.DatabaseCrosswalk`
    (its pooled engine of the map's source) or an Engine. A database failure is
    recorded (the report's ``error``, the map's state) and writes nothing. ``now``:
    the start time recorded (epoch seconds; default: the clock's)."""
    from sqlalchemy.exc import SQLAlchemyError

    if spec.source is None or spec.table is None or spec.value is None:
        raise ValueError(f"crosswalk map {spec.id!r} is not a database `table` map: it cannot be synced")
    started = time.monotonic()
    report = SyncReport(spec.id)
    state = _state(docs, spec)
    salt = state["salt"]
    docs.set(SYNCS, spec.id, {**state, "started_at": time.time() if now is None else now})
    existing = _existing_rows(docs, spec.id)
    seen: set[str] = set()  # ids read in this sync
    writes: dict[str, str] = {}  # id -> value of the rows added or changed
    batch = spec.sync.batch_size if spec.sync else 1000

    def done(total: int | None = None) -> None:  # a row is done once read and, if it changed, written
        if total is not None:
            report.total = total
        if progress:
            progress(report.rows_read - len(writes), report.total)

    try:
        # the whole table is read before anything is written: the connection is not held
        # open while the document store is slow (MariaDB drops an unread stream), and a
        # failure writes nothing
        for rows in _read_table(_engine(crosswalk_or_engine, spec), spec, batch, done):
            for *keys, value in rows:
                _compare_row(spec, salt, keys, value, existing, seen, writes, report)
            done()
    except (SQLAlchemyError, OSError, RetryLater, SecretError) as exc:
        report.error = _describe(spec, exc)
        report.added = report.changed = report.unchanged = report.skipped = 0
    if report.error is None:
        for n, (doc_id, value) in enumerate(list(writes.items()), 1):
            docs.set(ROWS, doc_id, {"map": spec.id, "value": value})
            del writes[doc_id]
            if n % batch == 0:
                done()
        for doc_id in existing:  # still here: no longer in the table
            docs.delete(ROWS, doc_id)
        report.removed = len(existing)
        done()
    report.seconds = round(time.monotonic() - started, 3)
    report.finished_at = datetime.now(timezone.utc).isoformat()
    _record(docs, spec, report)
    return report


def _compare_row(spec, salt, keys, value, existing, seen, writes, report) -> None:
    """Count one row read and note its write if it is new or changed."""
    report.rows_read += 1
    if value is None or any(k is None for k in keys):
        report.skipped += 1
        return
    doc_id = row_id(spec.id, salt, normalized_keys(spec, [str(k) for k in keys]))
    if doc_id in seen:  # the same key again (a case-insensitive map, a table without a unique key)
        report.skipped += 1
        return
    seen.add(doc_id)
    value = str(value)
    if doc_id not in existing:
        writes[doc_id] = value
        report.added += 1
    elif existing.pop(doc_id) == value:
        report.unchanged += 1
    else:
        writes[doc_id] = value
        report.changed += 1


def _record(docs: "DocumentStore", spec: "CrosswalkTable", report: SyncReport) -> None:
    state = docs.get(SYNCS, spec.id) or {}
    state = {**state, "map": spec.id, "last": asdict(report), "error": report.error}
    if report.error is None:
        state.update(synced_at=time.time(), shape=shape(spec))
        log.info("crosswalk map %s synced: %d added, %d changed, %d removed, %d unchanged, %d skipped (%.1f s)",
                 spec.id, report.added, report.changed, report.removed, report.unchanged, report.skipped,
                 report.seconds)
    else:
        log.warning("crosswalk map %s: sync failed, the previous copy stays: %s", spec.id, report.error)
    docs.set(SYNCS, spec.id, state)


def sync_state(docs: "DocumentStore", map_id: str) -> dict[str, Any] | None:
    """The map's state document without its salt (for status and the CLI)."""
    state = docs.get(SYNCS, map_id)
    return None if state is None else {k: v for k, v in state.items() if k != "salt"}


def run_due_syncs(docs: "DocumentStore", crosswalk: Any, config: "AppConfig", now: float | None = None,
                  progress: Callable[[str], Progress | None] | None = None) -> list[SyncReport]:
    """Sync every synced map of ``config`` whose ``every_s`` has passed since its last
    sync started (or whose shape changed since its last complete sync); both runtimes
    call this on a timer. A map is claimed first (compare-and-set of its start time),
    so two instances due at once sync it once."""
    now = time.time() if now is None else now
    reports = []
    for spec in config.crosswalks:
        if not spec.synced:
            continue
        state = docs.get(SYNCS, spec.id)
        if state is not None and state.get("shape") == shape(spec) and \
                now - float(state.get("started_at") or 0) < spec.sync.every_s:
            continue
        if state is None:
            state = _state(docs, spec)
        if not docs.compare_and_set([(SYNCS, spec.id, state, {**state, "started_at": now})]):
            continue  # another instance claimed it
        try:
            reports.append(sync_map(docs, crosswalk, spec, progress(spec.id) if progress else None, now=now))
        except Exception:  # noqa: BLE001 - the document store failed: the next round tries again
            log.exception("crosswalk map %s: sync failed", spec.id)
    return reports


class CrosswalkSyncer:
    """The embedded runtime's background syncs: :func:`run_due_syncs` every
    :data:`CHECK_EVERY_S`, over a crosswalk (pooled engines) rebuilt when the sources
    change."""

    def __init__(self, docs: "DocumentStore", config: Callable[[], "AppConfig"], secrets: "Secrets"):
        self.docs = docs
        self.config = config
        self.secrets = secrets
        self._crosswalk = None
        self._sources = None

    def _crosswalk_for(self, config: "AppConfig"):
        from shared.adapters.crosswalk_databases import DatabaseCrosswalk  # noqa: PLC0415 (imports this module)

        if self._crosswalk is None or self._sources != config.crosswalk_sources:
            self.close()
            self._crosswalk = DatabaseCrosswalk([], config.crosswalk_sources, self.secrets)
            self._sources = config.crosswalk_sources
        return self._crosswalk

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                config = self.config()
                if any(spec.synced for spec in config.crosswalks):
                    run_due_syncs(self.docs, self._crosswalk_for(config), config)
            except Exception:  # noqa: BLE001 - try again at the next round
                log.exception("crosswalk syncs failed")
            stopping.wait(CHECK_EVERY_S)
        self.close()

    def close(self) -> None:
        if self._crosswalk is not None:
            self._crosswalk.close()
            self._crosswalk = None
