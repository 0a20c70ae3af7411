"""Exception records: every instance that is not delivered ends in one, which an
operator can list, retry or release. Over the ports, so both runtimes, the stages,
the inputs and the HTTP endpoints share them.

A record holds UIDs and ids, never patient data: ``stage``, ``status`` (``quarantined``:
a bad input, copied aside with the reason; ``held``: nowhere to go yet; ``failed``: a
destination kept failing; ``refused``: a destination will not take it; ``retried``),
``reason``, ``attempts`` (time and reason of each try, the last :data:`ATTEMPTS_KEPT`),
``archived`` (a boolean, so that lists can filter on it by an index) and
``archived_at`` once an operator archived it (kept, but out of default lists) and,
when it can be retried, the message to republish (``retry``: topic and body).

Lists page through :meth:`shared.ports.DocumentStore.query` over the indexes of
:mod:`shared.indexes`: status, stage, destination and archived by equality,
``created_at`` as the order and the time range; the reason text is matched in the
process on the records the index gives, a batch at a time.

An open record holds the objects it names from retention until it is archived or its
retry has settled (shared/holds.py: a GCS temporary hold)."""

from __future__ import annotations

import base64
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from itertools import islice
from typing import Iterator

from shared import counters, holds
from shared.messages import (
    TOPIC_DELIVER,
    TOPIC_INGEST,
    TOPIC_PLANNED,
    TOPICS,
    BlobRef,
    Delivery,
    ObjectFinalized,
    Plan,
)
from shared.ports import Ports

log = logging.getLogger(__name__)

EXCEPTIONS = "exceptions"  # DocumentStore collection of exception records
# held deliveries waiting for their destination, by exception record id: a small index
# so that releasing them does not read every exception record
HELD_DELIVERIES = "held_deliveries"
# the failed tries of a delivery still being retried, by idempotency key, until it is
# delivered (removed) or ends in a record (moved into its ``attempts``)
DELIVERY_ATTEMPTS = "delivery_attempts"
ATTEMPTS_KEPT = 20  # per record: the newest tries; a record says how many there were in all

STATUSES = ("quarantined", "held", "failed", "refused", "retried")
STAGES = ("match", "morph", "route", "stow", *TOPICS)  # dead letters name their topic


class NotRetryable(LookupError):
    """An exception record that does not exist or carries no message to retry."""


class NoSuchRecord(NotRetryable):
    """No exception record has this id."""


class WrongState(NotRetryable):
    """The record exists, but the action does not apply to it now (e.g. releasing a
    record that is not held)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def record_exception(ports: Ports, *, stage: str, reason: str, status: str,
                     topic: str | None = None, body: str | None = None,
                     attempts: list[dict] | None = None, **refs) -> str:
    """Write an exception record. With ``topic`` and ``body`` it can be retried later by
    republishing the message. ``attempts``: the tries that led here (time and reason),
    by default this one."""
    record_id = uuid.uuid4().hex
    created_at = _now()
    attempts = attempts or [{"at": created_at, "reason": reason}]
    record = {
        "id": record_id,
        "stage": stage,
        "status": status,
        "reason": reason,
        "created_at": created_at,
        "archived": False,
        "attempts": attempts[-ATTEMPTS_KEPT:],
        "attempt_count": len(attempts),
        "retry": {"topic": topic, "body": body} if topic else None,
        **{k: (str(v) if isinstance(v, BlobRef) else v) for k, v in refs.items()},
    }
    holds.pin(ports, record_id, record)  # before the record: never an open record without its hold
    ports.docs.set(EXCEPTIONS, record_id, record)
    source = holds.source_of(record)
    if source is not None:  # a retry of this instance that ended here has settled
        holds.settle(ports, source, record.get("destination_id"))
    log.warning("exception %s stage=%s status=%s: %s", record_id, stage, status, reason)
    return record_id


MIGRATIONS = "migrations"  # DocumentStore collection: one document per data migration done
ARCHIVED_FIELD = "exception-records-archived-field"


def backfill_archived(docs) -> int:
    """Give records written before the ``archived`` field one (true once archived):
    the indexed lists filter on it, and a record without it would be missing from
    them. Runs once per store (a document in ``migrations`` says it ran); returns the
    number of records changed."""
    if docs.get(MIGRATIONS, ARCHIVED_FIELD):
        return 0
    changed = 0
    for record_id, record in docs.list(EXCEPTIONS).items():
        if "archived" not in record:
            docs.set(EXCEPTIONS, record_id, {**record, "archived": bool(record.get("archived_at"))})
            changed += 1
    docs.set(MIGRATIONS, ARCHIVED_FIELD, {"done_at": _now(), "changed": changed})
    if changed:
        log.info("exception records: %d given the archived field (indexed lists)", changed)
    return changed


def quarantine(ports: Ports, blob: BlobRef, reason: str, *, stage: str) -> BlobRef:
    """Copy a bad input to the quarantine bucket, record why, remove it from ingest."""
    target = ports.blobs.copy(blob, ports.config().settings.quarantine_bucket, blob.name)
    record_exception(ports, stage=stage, reason=reason, status="quarantined", blob=blob, quarantined_as=target)
    ports.blobs.delete(blob)
    return target


def hold_delivery(ports: Ports, delivery: Delivery, reason: str, *, stage: str) -> str:
    """Hold a delivery whose destination is disabled or not configured: a record
    (status ``held``) with the delivery to send, released by :func:`release_held` once
    the destination is enabled, or by an operator."""
    record_id = record_exception(ports, stage=stage, status="held", reason=reason,
                                 sop_instance_uid=delivery.sop_instance_uid, destination_id=delivery.destination_id,
                                 topic=TOPIC_DELIVER, body=delivery.model_dump_json())
    ports.docs.set(HELD_DELIVERIES, record_id, {"destination_id": delivery.destination_id})
    counters.count(ports, counters.destination(delivery.destination_id), holds=1, held=1)
    return record_id


def note_attempt(ports: Ports, delivery_key: str, reason: str) -> None:
    """Keep a failed try of a delivery that will be tried again (newest
    :data:`ATTEMPTS_KEPT`). One worker holds a delivery's claim at a time, so a plain
    read and write is enough."""
    doc = ports.docs.get(DELIVERY_ATTEMPTS, delivery_key) or {"attempts": [], "count": 0}
    attempts = [*doc["attempts"], {"at": _now(), "reason": reason}][-ATTEMPTS_KEPT:]
    ports.docs.set(DELIVERY_ATTEMPTS, delivery_key, {"attempts": attempts, "count": int(doc["count"]) + 1})


def take_attempts(ports: Ports, delivery_key: str) -> tuple[list[dict], int]:
    """The kept tries of a delivery and how many there were, forgotten here."""
    doc = ports.docs.get(DELIVERY_ATTEMPTS, delivery_key)
    if doc is None:
        return [], 0
    ports.docs.delete(DELIVERY_ATTEMPTS, delivery_key)
    return list(doc.get("attempts") or []), int(doc.get("count") or 0)


def list_exceptions(ports: Ports, status: str | None = None) -> list[dict]:
    """The exception records, oldest first; only those with ``status`` if given
    (archived ones included; reads every one: for tests and small stores)."""
    return list(iter_exceptions(ports, ExceptionFilter(status=status, archived=None)))


@dataclass(frozen=True)
class ExceptionFilter:
    """Which records a list or a bulk action is about; None matches anything.
    ``reason`` matches a part of the reason (case does not matter); ``since`` and
    ``until`` bound ``created_at`` (``until`` excluded); ``archived``: False (the
    default) leaves archived records out, True lists only them, None both."""

    status: str | None = None
    stage: str | None = None
    destination_id: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    archived: bool | None = False

    def __post_init__(self):
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.stage is not None and self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:  # naive: UTC, as the CLI's --at
                object.__setattr__(self, name, value.replace(tzinfo=timezone.utc))

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in ("status", "stage", "destination_id", "reason", "since", "until"))

    def indexed(self) -> dict:
        """The equality filters an index serves (shared/indexes.py)."""
        equal = {"status": self.status, "stage": self.stage, "destination_id": self.destination_id,
                 "archived": self.archived}
        return {k: v for k, v in equal.items() if v is not None}

    def matches(self, record: dict) -> bool:
        if self.archived is not None and bool(record.get("archived_at")) != self.archived:
            return False
        if self.status is not None and record.get("status") != self.status:
            return False
        if self.stage is not None and record.get("stage") != self.stage:
            return False
        if self.destination_id is not None and record.get("destination_id") != self.destination_id:
            return False
        if self.reason is not None and self.reason.lower() not in str(record.get("reason") or "").lower():
            return False
        if self.since is not None or self.until is not None:
            try:
                created = datetime.fromisoformat(record.get("created_at") or "")
            except ValueError:
                return False
            if (self.since is not None and created < self.since) or (self.until is not None and created >= self.until):
                return False
        return True


def _stored_time(at: datetime | None) -> str | None:
    """``at`` as ``created_at`` is written (UTC ISO 8601), which sorts as text."""
    return None if at is None else at.astimezone(timezone.utc).isoformat()


def encode_cursor(record: dict) -> str:
    key = f"{record.get('created_at') or ''}|{record.get('id') or ''}"
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The position (created_at, id) a cursor stands for; ValueError for one this
    module did not make."""
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"cursor {cursor!r} is not one this server gave") from None
    created_at, bar, record_id = key.rpartition("|")
    if not bar or not created_at or not record_id:
        raise ValueError(f"cursor {cursor!r} is not one this server gave")
    return created_at, record_id


READ_BATCH = 500  # records read per query when a text filter may leave many out


def iter_exceptions(ports: Ports, where: ExceptionFilter, *, after: str | None = None,
                    batch: int | None = None) -> Iterator[dict]:
    """The records ``where`` matches, oldest first, after the cursor ``after``: read
    ``batch`` at a time through the indexed query (status, stage, destination,
    archived, time range), the reason text matched here on what it returns, so a
    rare text may read many records of the indexed set, never the others."""
    position = decode_cursor(after) if after else None
    batch = batch or READ_BATCH
    while True:
        got = ports.docs.query(EXCEPTIONS, where=where.indexed(), order_by="created_at",
                               at_least=_stored_time(where.since), below=_stored_time(where.until),
                               after=position, limit=batch)
        for record_id, record in got:
            record.setdefault("id", record_id)  # the cursor's tie-break is the document id
            if where.matches(record):  # the text filter; the rest the index already did
                yield record
        if len(got) < batch:
            return
        last_id, last = got[-1]
        position = (last["created_at"], last_id)


def find_exceptions(ports: Ports, where: ExceptionFilter, *, limit: int,
                    after: str | None = None) -> tuple[list[dict], str | None]:
    """A page: at most ``limit`` records ``where`` matches, oldest first, after the
    cursor ``after``; and the cursor of the next page (None on the last). A cursor is
    a position (time and id), so records added meanwhile neither shift nor repeat a
    page. Reads one index range of about the page's size (more with a reason filter)."""
    batch = limit + 1 if where.reason is None else max(limit + 1, READ_BATCH)
    found = list(islice(iter_exceptions(ports, where, after=after, batch=batch), limit + 1))
    if len(found) <= limit:
        return found, None
    page = found[:limit]
    return page, encode_cursor(page[-1])


def select_exceptions(ports: Ports, where: ExceptionFilter) -> tuple[Iterator[str], int | None]:
    """The ids of the records ``where`` matches now, read page by page as they are
    consumed (a bulk job), and how many there are when an index count can say (no
    text filter, no time range; else None). Records created from now on are left out,
    so an action that makes new records (a retry that fails again) never reaches them."""
    bounded = replace(where, until=min(where.until or datetime.now(timezone.utc), datetime.now(timezone.utc)))
    total = None
    if where.reason is None and where.since is None and where.until is None:
        total = ports.docs.count(EXCEPTIONS, where.indexed())
    return (record["id"] for record in iter_exceptions(ports, bounded)), total


def get_exception(ports: Ports, record_id: str) -> dict:
    record = ports.docs.get(EXCEPTIONS, record_id)
    if record is None:
        raise NoSuchRecord(f"no exception record {record_id}")
    return record


def retry_exception(ports: Ports, record_id: str) -> dict:
    """Publish the message a record holds back onto its topic (a delivery to route
    again, a held instance to plan again, ...) and mark the record ``retried``. The
    publish is durable (the Bus port's promise) before the record changes; the
    delivery ledger still guards against a second delivery of what did arrive."""
    record = get_exception(ports, record_id)
    retry = record.get("retry") or {}
    if not retry.get("topic") or retry.get("body") is None:
        raise WrongState(f"exception record {record_id} ({record.get('status')}) has no message to retry")
    topic, body = _replannable(retry["topic"], retry["body"])
    # the holds stay until the message settles; marked first, so a delivery at once settles them
    holds.mark_retried(ports, record_id, record)
    try:
        ports.bus.publish(topic, body.encode())
    except BaseException:
        holds.mark_retried(ports, record_id, record, retried=False)
        raise
    updated = {**record, "status": "retried", "retried_at": _now(), "retries": int(record.get("retries") or 0) + 1}
    ports.docs.set(EXCEPTIONS, record_id, updated)
    ports.docs.delete(HELD_DELIVERIES, record_id)
    if topic == TOPIC_DELIVER and record.get("destination_id"):
        was_held = record.get("status") == "held" and not record.get("archived_at")
        counters.count(ports, counters.destination(record["destination_id"]), enqueued=1, held=-1 if was_held else 0)
    log.info("exception %s retried on %s", record_id, topic)
    return updated


def release_exception(ports: Ports, record_id: str) -> dict:
    """Send a held record's instance on now (:func:`retry_exception`): only a
    ``held`` record, and a held delivery only once its destination is configured and
    enabled (otherwise it would only be held again)."""
    record = get_exception(ports, record_id)
    if record.get("status") != "held":
        raise WrongState(f"exception record {record_id} is {record.get('status')}, not held")
    if record.get("retry", {}).get("topic") == TOPIC_DELIVER:
        why_not = ports.config().why_not_deliverable(record.get("destination_id") or "")
        if why_not:
            raise WrongState(f"exception record {record_id} stays held: {why_not}")
    return retry_exception(ports, record_id)


def archive_exception(ports: Ports, record_id: str) -> dict:
    """Take a record out of the default lists; it is kept (``archived_at``). A held
    delivery archived is no longer released when its destination comes back."""
    record = get_exception(ports, record_id)
    if record.get("archived_at"):
        return record
    updated = {**record, "archived": True, "archived_at": _now()}
    ports.docs.set(EXCEPTIONS, record_id, updated)
    if record.get("status") == "held" and record.get("destination_id"):
        ports.docs.delete(HELD_DELIVERIES, record_id)
        counters.count(ports, counters.destination(record["destination_id"]), held=-1)
    holds.unpin(ports, record_id, record)  # after the record: a crash keeps a hold, never loses one
    log.info("exception %s archived", record_id)
    return updated


def release_held(ports: Ports) -> list[str]:
    """Send the held deliveries whose destination is configured and enabled now; return
    the ids of the records released. Runs periodically (embedded runtime) or from a
    scheduler (GCP); an operator can also release one record (:func:`retry_exception`)."""
    config = ports.config()
    released = []
    for record_id, held in ports.docs.list(HELD_DELIVERIES).items():
        if config.why_not_deliverable(held.get("destination_id", "")):
            continue
        try:
            retry_exception(ports, record_id)
        except NotRetryable:
            ports.docs.delete(HELD_DELIVERIES, record_id)  # released or removed meanwhile
            continue
        released.append(record_id)
    if released:
        log.info("released %d held delivery(ies) to destinations enabled again", len(released))
    return released


def _replannable(topic: str, body: str) -> tuple[str, str]:
    """A plan with no destinations (held by match before held plans were planned again)
    goes back to match, which decides under the config of now."""
    if topic == TOPIC_PLANNED:
        try:
            plan = Plan.model_validate_json(body)
        except ValueError:
            return topic, body
        if not plan.destination_ids:
            return TOPIC_INGEST, ObjectFinalized(blob=plan.blob).model_dump_json()
    return topic, body
