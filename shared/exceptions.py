"""Exception records: every instance that is not delivered ends in one, which an
operator can list, retry or release. Over the ports, so both runtimes, the stages,
the inputs and the HTTP endpoints share them.

A record holds UIDs and ids, never patient data: ``stage``, ``status`` (``quarantined``:
a bad input, copied aside with the reason; ``held``: nowhere to go yet; ``failed``: a
destination kept failing; ``refused``: a destination will not take it; ``retried``),
``reason`` and, when it can be retried, the message to republish (``retry``: topic
and body)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone

from shared.messages import TOPIC_DELIVER, TOPIC_INGEST, TOPIC_PLANNED, BlobRef, Delivery, ObjectFinalized, Plan
from shared.ports import Ports

log = logging.getLogger(__name__)

EXCEPTIONS = "exceptions"  # DocumentStore collection of exception records
# held deliveries waiting for their destination, by exception record id: a small index
# so that releasing them does not read every exception record
HELD_DELIVERIES = "held_deliveries"


class NotRetryable(LookupError):
    """An exception record that does not exist or carries no message to retry."""


def record_exception(ports: Ports, *, stage: str, reason: str, status: str,
                     topic: str | None = None, body: str | None = None, **refs) -> str:
    """Write an exception record. With ``topic`` and ``body`` it can be retried later by
    republishing the message."""
    record_id = uuid.uuid4().hex
    ports.docs.set(EXCEPTIONS, record_id, {
        "id": record_id,
        "stage": stage,
        "status": status,
        "reason": reason,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "retry": {"topic": topic, "body": body} if topic else None,
        **{k: (str(v) if isinstance(v, BlobRef) else v) for k, v in refs.items()},
    })
    log.warning("exception %s stage=%s status=%s: %s", record_id, stage, status, reason)
    return record_id


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
    return record_id


def list_exceptions(ports: Ports, status: str | None = None) -> list[dict]:
    """The exception records, oldest first; only those with ``status`` if given."""
    records = ports.docs.list(EXCEPTIONS).values()
    return sorted((r for r in records if status is None or r.get("status") == status),
                  key=lambda r: r.get("created_at") or "")


def retry_exception(ports: Ports, record_id: str) -> dict:
    """Publish the message a record holds back onto its topic (a delivery to route
    again, a held instance to plan again, ...) and mark the record ``retried``. The
    publish is durable (the Bus port's promise) before the record changes; the
    delivery ledger still guards against a second delivery of what did arrive."""
    record = ports.docs.get(EXCEPTIONS, record_id)
    if record is None:
        raise NotRetryable(f"no exception record {record_id}")
    retry = record.get("retry") or {}
    if not retry.get("topic") or retry.get("body") is None:
        raise NotRetryable(f"exception record {record_id} ({record.get('status')}) has no message to retry")
    topic, body = _replannable(retry["topic"], retry["body"])
    ports.bus.publish(topic, body.encode())
    record = {**record, "status": "retried", "retried_at": datetime.now(timezone.utc).isoformat(),
              "retries": int(record.get("retries") or 0) + 1}
    ports.docs.set(EXCEPTIONS, record_id, record)
    ports.docs.delete(HELD_DELIVERIES, record_id)
    log.info("exception %s retried on %s", record_id, topic)
    return record


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
