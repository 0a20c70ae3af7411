"""Holds: the objects an open exception record needs are kept from retention.

GCS deletes by lifecycle rules, by age only (terraform/, docs/architecture.md
"Retention"); a held instance may wait for its destination longer than any age. So an
exception record that may be retried (``held``, ``failed``, ``refused``) **pins** every
object it names, and an object with a pin carries a hold (``BlobStore.set_hold``: a GCS
temporary hold, which lifecycle rules never delete through; the local store's sweeper
reads the records itself, so there it does nothing).

A pin goes when its record is archived, or once the retried record's message has
**settled**: the instance was delivered to the record's destination (or was a
duplicate there), or the retry ended in a new record (which pinned the objects before
the old pin went). A retried record without a destination (a plan to make again) is
settled by the first such outcome of any destination of its received object. The hold
goes with the last pin: several records on one object (two destinations failing) keep
it until the last one closes.

The pins of an object live in one document of :data:`OBJECT_HOLDS` (by a digest of the
object's reference: ``{"ref", "pins": {record_id: {"destination_id", "retried"}}}``),
changed by compare-and-set, so concurrent functions neither lose a pin nor release a
hold another record still needs: a release reads the pins again afterwards and holds
again if a record pinned the object meanwhile. Opening pins before the record is
written and closing after it changes, so a crash leaves a hold too many (an object
kept), never a record without its hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable

from shared.messages import BlobRef
from shared.ports import Ports

log = logging.getLogger(__name__)

OBJECT_HOLDS = "object_holds"  # DocumentStore collection: the pins of each held object
PINNING_STATUSES = ("held", "failed", "refused")  # records that may still be retried


def objects_in(value: Any, into: set[BlobRef]) -> None:
    """Every object reference in a message (a dict with ``bucket`` and ``name``), also in
    a message inside a dead letter's or a retry's ``body``."""
    if isinstance(value, dict):
        if isinstance(value.get("bucket"), str) and isinstance(value.get("name"), str):
            generation = value.get("generation")
            into.add(BlobRef(bucket=value["bucket"], name=value["name"],
                             generation=str(generation) if generation else None))
        for key, item in value.items():
            if key == "body" and isinstance(item, str):
                try:
                    item = json.loads(item)
                except ValueError:
                    continue
            objects_in(item, into)
    elif isinstance(value, list):
        for item in value:
            objects_in(item, into)


def objects_of_record(record: dict) -> set[BlobRef]:
    """The objects an exception record names: its ``blob`` (the received object),
    ``quarantined_as`` and those of the message it would retry."""
    found: set[BlobRef] = set()
    for field in ("blob", "quarantined_as"):
        text = record.get(field)
        if isinstance(text, str):
            try:
                found.add(BlobRef.parse(text))
            except ValueError:
                continue
    objects_in(record.get("retry") or {}, found)
    return found


def source_of(record: dict) -> BlobRef | None:
    """The received object a record is about: its ``blob``, or the ``source`` (a
    delivery) or ``blob`` (a plan, a notification) of the message it would retry."""
    if isinstance(record.get("blob"), str):
        try:
            return BlobRef.parse(record["blob"])
        except ValueError:
            return None
    try:
        message = json.loads((record.get("retry") or {}).get("body") or "")
    except ValueError:
        return None
    ref = message.get("source") or message.get("blob") if isinstance(message, dict) else None
    try:
        return BlobRef.model_validate(ref) if isinstance(ref, dict) else None
    except ValueError:
        return None


def _doc_id(ref: BlobRef) -> str:
    # a reference holds '/', which a document id cannot
    return hashlib.sha256(str(ref).encode()).hexdigest()


def pins_of(ports: Ports, ref: BlobRef) -> dict[str, dict]:
    """The records pinning ``ref``, by id."""
    return dict((ports.docs.get(OBJECT_HOLDS, _doc_id(ref)) or {}).get("pins") or {})


def _change(ports: Ports, ref: BlobRef, change: Callable[[dict], dict]) -> tuple[dict, dict]:
    """Apply ``change`` to the object's pins atomically; (before, after)."""
    doc_id = _doc_id(ref)
    while True:
        old = ports.docs.get(OBJECT_HOLDS, doc_id)
        before = dict((old or {}).get("pins") or {})
        after = change(dict(before))
        if after == before:
            return before, after
        new = {"ref": str(ref), "pins": after} if after else None
        if ports.docs.compare_and_set([(OBJECT_HOLDS, doc_id, old, new)]):
            return before, after


def pin(ports: Ports, record_id: str, record: dict) -> None:
    """Before ``record`` is written: hold the objects it names, if it may be retried."""
    if record.get("status") not in PINNING_STATUSES:
        return
    entry = {"destination_id": record.get("destination_id"), "retried": False}
    for ref in sorted(objects_of_record(record), key=str):
        _change(ports, ref, lambda pins: {**pins, record_id: entry})
        ports.blobs.set_hold(ref, True)  # also when held already: a crash may have come between


def unpin(ports: Ports, record_id: str, record: dict) -> None:
    """After ``record`` was closed (archived, or its retry settled): take its pins off,
    and the hold of each object no other record pins."""
    for ref in sorted(objects_of_record(record), key=str):
        before, after = _change(ports, ref, lambda pins: {k: v for k, v in pins.items() if k != record_id})
        if record_id in before and not after:
            ports.blobs.set_hold(ref, False)
            if pins_of(ports, ref):  # pinned between the change and the release: hold again
                ports.blobs.set_hold(ref, True)


def mark_retried(ports: Ports, record_id: str, record: dict, retried: bool = True) -> None:
    """Before ``record``'s message is published again: its pins stay until that message
    settles (:func:`settle`). ``retried`` False undoes it (the publish failed)."""
    for ref in objects_of_record(record):
        _change(ports, ref, lambda pins: {**pins, record_id: {**pins[record_id], "retried": retried}}
                if record_id in pins else pins)


def settle(ports: Ports, source: BlobRef, destination_id: str | None) -> None:
    """An instance came to an end at a destination (delivered, a duplicate, or a new
    record; ``destination_id`` None: a record without one): the retried records of its
    received object ``source`` for that destination, or for none, have settled. One
    read when nothing is pinned, as for nearly every delivery."""
    pins = pins_of(ports, source)
    for record_id, entry in pins.items():
        if entry.get("retried") and entry.get("destination_id") in (None, destination_id):
            from shared.exceptions import EXCEPTIONS  # here: shared.exceptions imports this module

            record = ports.docs.get(EXCEPTIONS, record_id) or {"blob": str(source)}
            unpin(ports, record_id, record)
            log.info("exception %s settled: its objects' holds released", record_id)
