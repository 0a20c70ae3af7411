"""The pipeline stages as plain functions. Both runtimes call these unchanged:
the embedded one from queue workers, the GCP one from Cloud Functions.

    ingest object --match--> Plan --[crosswalk]--> Plan --morph--> Delivery x N --route--> destination
                                                                                  \\--> exception record

crosswalk runs only for a plan whose actions look values up (``crosswalk``,
``ai_standardize``): it resolves them against the databases and the model and passes
the answers on in the plan, so morph calls nothing outside the instance.

Every stage is at-least-once safe: re-running it produces the same output, and
``route`` checks the delivery ledger, so a redelivered message never sends twice.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

from pydicom.dataset import Dataset

from shared import counters, holds
from shared.config import AppConfig
from shared.dicom.io import Buffer, content_digest, mapped, read_instance, unmap
from shared.dicom.original_attributes import ORIGINAL_ATTRIBUTES_SEQUENCE, OriginalAttributesPolicy
from shared.dicom.splice import write_morphed
from shared.errors import DeliveryRefused, Held, LookupFailed, LookupUnavailable, RetryLater, Unprocessable
from shared.exceptions import hold_delivery, note_attempt, quarantine, record_exception, take_attempts
from shared.logs import add_labels, describe_error, note_outcome, stage_run
from shared.messages import (
    MESSAGE_OF_TOPIC,
    TOPIC_CROSSWALK,
    TOPIC_DELIVER,
    TOPIC_INGEST,
    TOPIC_PLANNED,
    BlobRef,
    DeadLetter,
    Delivery,
    IngestMetadata,
    ObjectFinalized,
    Plan,
)
from shared.morph import apply_actions
from shared.morph_services import MorphServices
from shared.ports import Claim, DocumentStore, Ports, Secrets
from shared.rules import decide, validate_instance

log = logging.getLogger(__name__)

DELIVERY_LEASE_S = 600.0


# --- what each stage call logs ----------------------------------------------------------


def _observed(stage: str, labels_of, outcome_of):
    """Runs the stage with its labels on every line logged inside and ends with its
    ``stage_done`` line (shared/logs.stage_run): the outcome from what it returned,
    unless the stage noted one (quarantined)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(ports: Ports, message, *args, **kwargs):
            with stage_run(stage, **labels_of(message)) as current:
                result = fn(ports, message, *args, **kwargs)
                current.outcome = current.outcome or outcome_of(result)
                return result

        return run

    return wrap


def _ingest_labels(ingest: IngestMetadata) -> dict[str, str | None]:
    """Where an instance came from: the listener for C-STORE, else the source's id."""
    cstore = ingest.source_type == "cstore"
    return {"source_type": ingest.source_type, "listener": ingest.source_id if cstore else None,
            "source": None if cstore else ingest.source_id or None}


def _rules_label(matched: list) -> str | None:
    return ",".join(f"{ref.ruleset_id}/{ref.rule_id}" for ref in matched) or None


def _event_labels(event: ObjectFinalized) -> dict[str, str | None]:
    if not event.metadata:  # a bare notification: known once match has read the metadata
        return {}
    ingest = IngestMetadata.from_blob_metadata(event.metadata)
    return {"sop_uid": ingest.sop_instance_uid or None, **_ingest_labels(ingest)}


def _plan_labels(plan: Plan) -> dict[str, str | None]:
    return {"sop_uid": plan.sop_instance_uid, "rule": _rules_label(plan.matched),
            "destination": ",".join(plan.destination_ids) or None, **_ingest_labels(plan.ingest)}


def _delivery_labels(delivery: Delivery) -> dict[str, str | None]:
    return {"sop_uid": delivery.sop_instance_uid, "destination": delivery.destination_id,
            **_ingest_labels(delivery.ingest)}


def _dead_letter_labels(letter: DeadLetter) -> dict[str, str | None]:
    refs = _message_refs(letter.topic, letter.body)
    return {"topic": letter.topic, "sop_uid": refs.get("sop_instance_uid"), "destination": refs.get("destination_id")}


# --- match ----------------------------------------------------------------------------


@_observed("match", _event_labels,
           lambda plan: "ignored" if plan is None else "planned" if plan.destination_ids else "held")
def match(ports: Ports, event: ObjectFinalized) -> Plan | None:
    """Parse the received instance's header, run the rules, publish the plan."""
    config = ports.config()
    if event.blob.bucket != config.settings.ingest_bucket:
        log.info("ignoring %s: not the ingest bucket", event.blob)
        return None
    if not ports.blobs.exists(event.blob):
        quarantined = BlobRef(bucket=config.settings.quarantine_bucket, name=event.blob.name)
        if ports.blobs.exists(quarantined):
            log.info("ignoring %s: quarantined already (a redelivered notification)", event.blob)
        else:  # removed by someone else before it was planned: say so, nothing is left to retry
            note_outcome("failed")
            record_exception(ports, stage="match", status="failed", blob=event.blob,
                             reason="the received object was removed from the ingest bucket before it was planned")
        return None
    ingest = IngestMetadata.from_blob_metadata(event.metadata or ports.blobs.metadata(event.blob))
    add_labels(sop_uid=ingest.sop_instance_uid or None, **_ingest_labels(ingest))
    try:
        with ports.blobs.local_path(event.blob) as path:
            data = mapped(path)  # the header is read in place: memory does not grow with the instance
            ds = read_instance(path, data=data)
        problems = validate_instance(ds, config.settings)
        if problems:
            raise Unprocessable("; ".join(problems))
        # values are decoded here, as the rules read them: one that cannot be raises
        # Unprocessable (shared/dicom/io.UndecodableValue), and so does it in morph
        decision = decide(config, ds, ingest)
    except Unprocessable as exc:  # bad input: retrying cannot help, quarantined at first sight
        note_outcome("quarantined")
        quarantine(ports, event.blob, str(exc), stage="match")
        counters.count(ports, counters.origin_of(ingest), received=1, quarantined=1, error=str(exc))
        return None
    plan = Plan(
        blob=event.blob,
        ingest=ingest,
        sop_instance_uid=str(ds.SOPInstanceUID),
        matched=decision.matched,
        actions=decision.actions,
        destination_ids=decision.destination_ids,
        log_original_attributes=decision.log_original_attributes,
    )
    add_labels(sop_uid=plan.sop_instance_uid, rule=_rules_label(plan.matched),
               destination=",".join(plan.destination_ids) or None)
    if not plan.destination_ids:
        # released, it is planned again from the received object under the config of then
        record_exception(ports, stage="match", status="held", reason="no rule matched and the default route has no destinations",
                         blob=event.blob, sop_instance_uid=plan.sop_instance_uid,
                         topic=TOPIC_INGEST, body=ObjectFinalized(blob=event.blob).model_dump_json())
        counters.count(ports, counters.origin_of(ingest), received=1, held=1)
        return plan
    if plan.needs_lookups:
        ports.bus.publish(TOPIC_CROSSWALK, plan)  # resolved there, then on to morph
    else:
        if plan.actions:
            PARSED.put(event.blob, data, ds)
        ports.bus.publish(TOPIC_PLANNED, plan)
    counters.count(ports, counters.origin_of(ingest), received=1, processed=1)
    log.info("planned %s -> %s (%d rule(s))", plan.sop_instance_uid, plan.destination_ids, len(plan.matched))
    return plan


class ParsedInstances:
    """Instances match has just parsed, handed to morph in the same process.

    Where both stages run in one process (the embedded runtime), morph would otherwise
    read and parse the same immutable ingest object again. An entry is taken once (morph
    changes the dataset); the newest are kept up to ``max_bytes`` of file data (small
    files read whole, larger ones mapped with only their headers in memory:
    ``io.mapped``; the parsed dataset's large values stay in the file). A miss (another
    process, a retry, a long backlog) just means reading the object."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, str | None], tuple[Buffer, Dataset]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, blob: BlobRef, data: Buffer, ds: Dataset) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            self._entries[(blob.bucket, blob.name, blob.generation)] = (data, ds)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (old, _) = self._entries.popitem(last=False)
                self._bytes -= len(old)

    def take(self, blob: BlobRef) -> tuple[Buffer, Dataset] | None:
        with self._lock:
            entry = self._entries.pop((blob.bucket, blob.name, blob.generation), None)
            if entry is not None:
                self._bytes -= len(entry[0])
            return entry


PARSED = ParsedInstances()


# --- crosswalk ------------------------------------------------------------------------


@_observed("crosswalk", _plan_labels, lambda plan: "resolved" if plan is not None else "stopped")
def crosswalk(ports: Ports, plan: Plan) -> Plan | None:
    """Resolve the plan's ``crosswalk`` and ``ai_standardize`` actions: run its actions
    on the instance with the live services (databases, the model), keep every answer,
    and publish the plan with them (``Plan.lookups``) for morph. Nothing is written.

    A database that is down raises :class:`RetryLater` (the message comes back later).
    A miss whose policy is ``hold`` becomes a ``held`` record and ``fail`` a ``failed``
    one, both retried onto this stage once the map has the entry; a value the actions
    cannot take quarantines the instance, as morph would."""
    config = ports.config()
    services = lookup_services(config, ports).recording(fresh=plan.recheck_misses)
    try:
        with ports.blobs.local_path(plan.blob) as path:
            data = mapped(path)
            try:
                ds = read_instance(path, check=False, data=data)  # match checked it; it is immutable since
                apply_actions(ds, plan.actions, services)
            finally:
                unmap(data)
    except (Held, LookupFailed) as exc:
        held = isinstance(exc, Held)
        note_outcome("held" if held else "failed")
        record_exception(ports, stage="crosswalk", status="held" if held else "failed", reason=str(exc),
                         blob=plan.blob, sop_instance_uid=plan.sop_instance_uid, topic=TOPIC_CROSSWALK,
                         body=plan.model_copy(update={"recheck_misses": True}).model_dump_json())
        return None
    except Unprocessable as exc:
        note_outcome("quarantined")
        quarantine(ports, plan.blob, str(exc), stage="crosswalk")
        counters.count(ports, counters.origin_of(plan.ingest), quarantined=1, error=str(exc))
        return None
    except LookupUnavailable as exc:  # the plan waits; the status says why
        counters.count_lookup_error(ports, exc)
        raise
    finally:
        counters.count_lookups(ports, plan.actions, services.recorded)
    resolved = plan.model_copy(update={"lookups": services.recorded, "recheck_misses": False})
    ports.bus.publish(TOPIC_PLANNED, resolved)
    log.info("resolved %d lookup(s) for %s", len(services.recorded), plan.sop_instance_uid)
    return resolved


class LookupServices:
    """The crosswalk stage's live services, built once per store and per content of
    what they are made of (the maps, their sources, the standardizer's settings: a
    config reloaded unchanged keeps them), so the database maps' connection pools and
    caches live on; they are closed when a changed config replaces them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stores: tuple | None = None
        self._made_of: tuple | None = None
        self._services: MorphServices | None = None

    def __call__(self, config: AppConfig, ports: Ports) -> MorphServices:
        stores = (ports.docs, ports.secrets)
        made_of = (config.crosswalks, config.crosswalk_sources, config.settings.ai_standardizer)
        with self._lock:
            if (self._stores is None or any(a is not b for a, b in zip(self._stores, stores))
                    or self._made_of != made_of):
                old, self._services = self._services, live_services(config, ports.docs, ports.secrets)
                self._stores, self._made_of = stores, made_of
                close = getattr(old.crosswalk if old is not None else None, "close", None)
                if close is not None:
                    close()
            return self._services


def live_services(config: AppConfig, docs: DocumentStore, secrets: Secrets, *, ask_model: bool = True) -> MorphServices:
    """The services the crosswalk stage resolves lookups with: the config's maps (its
    database maps through :class:`~shared.adapters.crosswalk_databases.DatabaseCrosswalk`)
    and its standardizer, whose cache and budget are in ``docs``."""
    from shared.vertex_standardizer import standardizer_from_config

    crosswalk = None
    if any(table.source is not None for table in config.crosswalks):
        try:
            from shared.adapters.crosswalk_databases import DatabaseCrosswalk
        except ImportError as exc:  # the databases extra is not installed
            raise RetryLater(f"crosswalk maps read from databases need the `databases` extra "
                             f"(pip install 'axiom-flow[databases]'): {exc.name} is missing") from None
        crosswalk = DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources, secrets, docs=docs)
    return MorphServices.from_config(config, crosswalk=crosswalk,
                                     standardizer=standardizer_from_config(config, docs, ask_model=ask_model))


lookup_services = LookupServices()


# --- morph ----------------------------------------------------------------------------


@_observed("morph", _plan_labels,
           lambda deliveries: "forwarded" if deliveries is None else "published" if deliveries else "held")
def morph(ports: Ports, plan: Plan) -> list[Delivery] | None:
    """Apply the plan's actions, store the result, publish one delivery per destination.
    The morphed object is content-addressed, so a re-run writes the same object.

    The values of ``crosswalk`` and ``ai_standardize`` actions come from the plan's
    ``lookups`` only; a plan that needs them and has none (a message from before the
    crosswalk stage, or republished from an old record) goes to the crosswalk stage
    first (returns None)."""
    if plan.unresolved:
        ports.bus.publish(TOPIC_CROSSWALK, plan)
        return None
    config = ports.config()
    # with actions, this read is the received object's last (the morphed one is delivered)
    with ports.blobs.local_path(plan.blob, last_read=bool(plan.actions)) as path:
        parsed = PARSED.take(plan.blob)
        # match checked this object completely; it is immutable since
        data, ds = parsed if parsed is not None else (mapped(path), None)
        try:
            if ds is None:
                ds = read_instance(path, check=False, data=data)
            added = False
            if plan.actions:
                policy = (OriginalAttributesPolicy(modifying_system=config.settings.modifying_system,
                                                   modified_at=plan.ingest.received_at)
                          if plan.log_original_attributes else None)
                items_before = _original_attributes_items(ds)
                apply_actions(ds, plan.actions, MorphServices.from_lookups(plan.lookups or ()),
                              original_attributes=policy)
                added = _original_attributes_items(ds) > items_before
            # read before writing anything: a value that cannot be decoded leaves no object behind
            uids = (str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            if plan.actions:
                fd, tmp = tempfile.mkstemp(prefix="axiom-morph-", suffix=".dcm")
                os.close(fd)
                out = Path(tmp)
                try:
                    # the unchanged elements' bytes are copied from the received object
                    write_morphed(path, ds, out, data=data, hashed=False)
                    sha = content_digest(out, ignore_last_modification_time=added)
                    blob = ports.blobs.put_file(config.settings.processed_bucket,
                                                processed_name(plan.ingest, uids[0], sha), out, move=True)
                finally:
                    out.unlink(missing_ok=True)
            else:  # nothing to change: deliver the received bytes as they are
                sha = content_digest(path)
                blob = plan.blob
        except Unprocessable as exc:  # bad input: retrying cannot help, quarantined at first sight
            note_outcome("quarantined")
            quarantine(ports, plan.blob, str(exc), stage="morph")
            counters.count(ports, counters.origin_of(plan.ingest), quarantined=1, error=str(exc))
            return []
        finally:
            unmap(data)  # now: a mapped page stays in memory, whatever the store does after its last read
    deliveries = []
    for dest_id in plan.destination_ids:
        delivery = Delivery(
            sop_instance_uid=uids[0],
            sop_class_uid=uids[1],
            transfer_syntax_uid=uids[2],
            destination_id=dest_id,
            blob=blob,
            sha256=sha,
            original_attributes_added=added,
            source=plan.blob,
            ingest=plan.ingest,
        )
        why_not = config.why_not_deliverable(dest_id)
        counters.count(ports, counters.destination(dest_id), enqueued=1)
        if why_not:
            hold_delivery(ports, delivery, why_not, stage="morph")
            continue
        ports.bus.publish(TOPIC_DELIVER, delivery)
        deliveries.append(delivery)
    return deliveries


def _original_attributes_items(ds: Dataset) -> int:
    elem = ds.get(ORIGINAL_ATTRIBUTES_SEQUENCE)
    return len(elem.value) if elem is not None and elem.VR == "SQ" else 0


def processed_name(ingest: IngestMetadata, sop_instance_uid: str, sha256: str) -> str:
    """Name of a morphed object: its content digest and its receive time, under its
    receive date like ingest objects. A re-run of a plan writes the same object; a
    resend (another receive time) writes its own, so an object is never replaced by
    different bytes. A day's objects share a directory (locally, one directory per
    instance cost more than writing the file)."""
    return f"{ingest.received_at:%Y/%m/%d}/{sop_instance_uid}-{sha256}-{ingest.received_at:%H%M%S%f}.dcm"


# --- route ----------------------------------------------------------------------------


@_observed("route", _delivery_labels, str)
def route(ports: Ports, delivery: Delivery, attempt: int = 1) -> str:
    """Send one delivery. Returns 'delivered', 'duplicate', 'held' (the destination is
    disabled or gone: see :func:`hold_delivery`) or 'failed'; raises
    :class:`RetryLater` while attempts remain."""
    config = ports.config()
    why_not = config.why_not_deliverable(delivery.destination_id)
    if why_not:
        hold_delivery(ports, delivery, why_not, stage="route")
        return "held"
    dest = config.destination(delivery.destination_id)
    key = delivery.idempotency_key
    claim = ports.ledger.claim(key, DELIVERY_LEASE_S, {"destination_id": dest.id, "sop_instance_uid": delivery.sop_instance_uid})
    if claim is Claim.DELIVERED:
        log.info("duplicate delivery of %s to %s acknowledged, not sent", delivery.sop_instance_uid, dest.id)
        counters.count(ports, counters.destination(dest.id), duplicate=1)
        holds.settle(ports, delivery.source, dest.id)
        return "duplicate"
    if claim is Claim.BUSY:
        raise RetryLater(f"delivery {key} is being sent by another worker", delay_s=5.0)
    try:
        # usually the last read (another destination's send would read it from disk again)
        with ports.blobs.local_path(delivery.blob, last_read=True) as path:
            where = ports.senders.send(dest, path, delivery)
    except Exception as exc:
        ports.ledger.release(key)
        reason = describe_error(exc)  # no file name, no library message: they may hold tag values
        refused = isinstance(exc, (Unprocessable, DeliveryRefused))
        if refused or attempt >= dest.retry.max_attempts:
            earlier, _ = take_attempts(ports, key) if attempt > 1 else ([], 0)
            record_exception(ports, stage="route", status="refused" if refused else "failed",
                             reason=reason if refused else f"after {attempt} attempt(s): {reason}",
                             attempts=[*earlier, {"at": datetime.now(timezone.utc).isoformat(), "reason": reason}],
                             sop_instance_uid=delivery.sop_instance_uid, destination_id=dest.id,
                             topic=TOPIC_DELIVER, body=delivery.model_dump_json())
            counters.count(ports, counters.destination(dest.id), failed=1, error=reason)
            return "failed"
        note_attempt(ports, key, reason)  # kept for the record, should it come to one
        counters.count(ports, counters.destination(dest.id), error=reason)
        delay = min(dest.retry.max_backoff_s, dest.retry.initial_backoff_s * 2 ** (attempt - 1))
        raise RetryLater(reason, delay_s=delay) from None
    ports.ledger.mark_delivered(key, {"destination_id": dest.id, "sop_instance_uid": delivery.sop_instance_uid,
                                      "sha256": delivery.sha256, "where": where,
                                      "delivered_at": datetime.now(timezone.utc).isoformat()})
    counters.count(ports, counters.destination(dest.id), delivered=1)
    holds.settle(ports, delivery.source, dest.id)  # a retried record's holds go once it arrived
    if attempt > 1:
        take_attempts(ports, key)  # its failed tries led to no record
    log.info("delivered %s to %s", delivery.sop_instance_uid, dest.id)
    return "delivered"


# --- dead letters ---------------------------------------------------------------------


@_observed("dead_letter", _dead_letter_labels, lambda record_id: "recorded")
def dead_letter(ports: Ports, letter: DeadLetter) -> str:
    """A message a stage kept failing on becomes a retryable exception record (status
    ``failed``), naming the instance and destination the message was about."""
    refs = _message_refs(letter.topic, letter.body)
    reason = f"gave up after {letter.attempts} attempt(s): {letter.last_error}"
    record_id = record_exception(ports, stage=letter.topic, status="failed", reason=reason,
                                 topic=letter.topic, body=letter.body, **refs)
    if letter.topic == TOPIC_DELIVER and refs.get("destination_id"):
        counters.count(ports, counters.destination(refs["destination_id"]), failed=1, error=reason)
    return record_id


def _message_refs(topic: str, body: str) -> dict:
    """The UIDs and ids a stage message is about, for its exception record."""
    model = MESSAGE_OF_TOPIC.get(topic)
    try:
        message = model.model_validate_json(body) if model else None
    except ValueError:
        return {}  # not a message of ours: the record keeps the body as it came
    if isinstance(message, Delivery):
        return {"sop_instance_uid": message.sop_instance_uid, "destination_id": message.destination_id,
                "blob": message.source}
    if isinstance(message, Plan):
        return {"sop_instance_uid": message.sop_instance_uid, "blob": message.blob}
    if isinstance(message, ObjectFinalized):
        return {"blob": message.blob}
    return {}

