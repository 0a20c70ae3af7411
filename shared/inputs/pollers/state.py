"""Poller state in the DocumentStore (SQLite or Firestore: same documents).

Collections
-----------
``source_state/<source id>``      one document per source::

    {"source_id", "type",
     "watermark": "YYYYMMDD" | null,     # StudyDate of the newest study fully processed
     "studies": {StudyInstanceUID: [StudyDate, instances known, complete 0|1]},
     "changes_seq": int | null,          # Orthanc change log: last sequence number read
     "counters": {"found", "queued", "retrieved", "already_had", "failed"},   # cumulative
     "runs", "last_run", "last_success", "last_error", "last_result"}

``source_studies/<sha256(source id|study uid)[:40]>``   one document per study a
poller has retrieved from: the SOP Instance UIDs already ingested, as 16-hex-digit
sha256 prefixes (a 50 000-instance study stays under Firestore's 1 MiB). This is the
record that makes retrieval exactly-once: an instance listed here is never retrieved
again, whatever the ``studies`` map remembers.

``source_locks/<source id>``        a lease, so two runs of one source (two overlapping
Cloud Scheduler triggers, two processes) never work at the same time.

Counter units: ``found`` = studies with work to do (new, or more instances than last
time); ``queued`` = instances scheduled for retrieval; ``retrieved`` = instances
durably ingested; ``already_had`` = instances listed again (a study re-found by the
lookback window or the change log, or grown) that were already ingested and so were
not retrieved; ``failed`` = instances (or whole studies, when their listing failed)
that could not be retrieved and will be tried again on the next run.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.ports import DocumentStore

STATE = "source_state"
STUDIES = "source_studies"
LOCKS = "source_locks"

MAX_STUDIES = 5000  # entries of the seen-studies map kept in the state document
FLUSH_INTERVAL_S = 1.0  # Firestore sustains ~1 write/s per document
COUNTERS = ("found", "queued", "retrieved", "already_had", "failed")


def instance_digest(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:16]


def study_doc_id(source_id: str, study_uid: str) -> str:
    return hashlib.sha256(f"{source_id}|{study_uid}".encode()).hexdigest()[:40]


@dataclass
class SourceState:
    source_id: str
    type: str = ""
    watermark: str | None = None
    studies: dict[str, list] = field(default_factory=dict)  # uid -> [date, count, complete]
    changes_seq: int | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    runs: int = 0
    last_run: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    last_result: dict[str, Any] | None = None

    @classmethod
    def load(cls, docs: DocumentStore, source_id: str) -> "SourceState":
        doc = docs.get(STATE, source_id) or {}
        state = cls(source_id=source_id)
        for name in ("type", "watermark", "studies", "changes_seq", "runs", "last_run", "last_success", "last_error",
                     "last_result"):
            if doc.get(name) is not None:
                setattr(state, name, doc[name])
        state.counters.update({k: int(v) for k, v in (doc.get("counters") or {}).items() if k in COUNTERS})
        return state

    def save(self, docs: DocumentStore) -> None:
        docs.set(STATE, self.source_id, self.to_doc())

    def to_doc(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id, "type": self.type, "watermark": self.watermark,
            "studies": self.studies, "changes_seq": self.changes_seq, "counters": self.counters, "runs": self.runs,
            "last_run": self.last_run, "last_success": self.last_success,
            "last_error": self.last_error, "last_result": self.last_result,
        }

    def status(self) -> dict[str, Any]:
        """The document without the seen-studies map (for the status API)."""
        doc = self.to_doc()
        doc["studies_tracked"] = len(doc.pop("studies"))
        return doc

    def open_studies(self) -> list[str]:
        """Studies with instances still to retrieve (each run asks for them by UID)."""
        return [uid for uid, v in self.studies.items() if not v[2]]

    def prune(self, keep_from: str | None) -> None:
        """Forget complete studies the date-bounded query no longer returns (StudyDate
        before ``keep_from``, the next run's lower bound), then the oldest beyond
        MAX_STUDIES; studies with work left are kept first. Forgetting costs at most
        one instance listing if such a study shows up again: its ingested instances
        stay recorded in ``source_studies``."""
        if keep_from:
            self.studies = {u: v for u, v in self.studies.items() if not v[2] or not v[0] or v[0] >= keep_from}
        if len(self.studies) > MAX_STUDIES:
            keep = sorted(self.studies.items(), key=lambda kv: (not kv[1][2], kv[1][0] or ""), reverse=True)
            self.studies = dict(keep[:MAX_STUDIES])


class StudyRecord:
    """The ingested instances of one study for one source, written back at most every
    FLUSH_INTERVAL_S (and on ``flush``). A crash between an ingest and the next flush
    can make the next run ingest those few instances again; nothing is ever lost."""

    def __init__(self, docs: DocumentStore, source_id: str, study_uid: str):
        self.docs = docs
        self.doc_id = study_doc_id(source_id, study_uid)
        self.source_id = source_id
        self.study_uid = study_uid
        doc = docs.get(STUDIES, self.doc_id) or {}
        self.instances: set[str] = set(doc.get("instances") or [])
        self._dirty = False
        self._flushed_at = time.monotonic()

    def has(self, sop_instance_uid: str) -> bool:
        return instance_digest(sop_instance_uid) in self.instances

    def add(self, sop_instance_uid: str) -> None:
        self.instances.add(instance_digest(sop_instance_uid))
        self._dirty = True
        if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        self.docs.set(STUDIES, self.doc_id, {
            "source_id": self.source_id, "study_uid": self.study_uid,
            "instances": sorted(self.instances), "updated_at": datetime.now().astimezone().isoformat(),
        })
        self._dirty = False
        self._flushed_at = time.monotonic()


class SourceBusy(RuntimeError):
    """Another run of this source holds its lease."""


class SourceLease:
    """A lease document per source. ``create`` is atomic in both stores; an expired
    lease (its holder died) is deleted and taken. Two takers of the same expired lease
    could in a narrow window both succeed; the study records then still keep retrieval
    of already-recorded instances from repeating."""

    def __init__(self, docs: DocumentStore, source_id: str, lease_s: float):
        self.docs = docs
        self.source_id = source_id
        self.lease_s = lease_s
        self.owner = uuid.uuid4().hex
        self._renewed = 0.0

    def acquire(self) -> None:
        doc = {"owner": self.owner, "until": time.time() + self.lease_s}
        if self.docs.create(LOCKS, self.source_id, doc):
            self._renewed = time.monotonic()
            return
        held = self.docs.get(LOCKS, self.source_id)
        if held and float(held.get("until", 0)) > time.time():
            raise SourceBusy(f"source {self.source_id} is being polled by another run")
        self.docs.delete(LOCKS, self.source_id)
        if not self.docs.create(LOCKS, self.source_id, doc):
            raise SourceBusy(f"source {self.source_id} is being polled by another run")
        self._renewed = time.monotonic()

    def renew(self) -> None:
        if time.monotonic() - self._renewed > self.lease_s / 3:
            held = self.docs.get(LOCKS, self.source_id)
            if held and held.get("owner") == self.owner:
                self.docs.set(LOCKS, self.source_id, {"owner": self.owner, "until": time.time() + self.lease_s})
            self._renewed = time.monotonic()

    def release(self) -> None:
        held = self.docs.get(LOCKS, self.source_id)
        if held and held.get("owner") == self.owner:
            self.docs.delete(LOCKS, self.source_id)


def lookback(watermark: str | None, days: int) -> str | None:
    """The lower StudyDate bound of a run: ``days`` before the watermark."""
    if not watermark:
        return None
    try:
        return (datetime.strptime(watermark, "%Y%m%d") - timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:  # not a date (a state written by hand): the watermark as is
        return watermark


def cap_watermark(date: str, now: datetime) -> str:
    """A StudyDate in the future (bad data) must not push the watermark past every
    real study: never beyond tomorrow (PACS clocks are local time)."""
    limit = (now + timedelta(days=1)).strftime("%Y%m%d")
    return min(date, limit)
