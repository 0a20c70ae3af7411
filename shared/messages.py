"""Versioned messages passed between stages.

Messages carry references (bucket/object, sha256, association info, plan), never
DICOM bytes: Pub/Sub caps a message at 10 MB and the local queue should stay small.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SourceType = Literal["cstore", "stow", "dicomweb_poller", "dimse_poller", "healthcare", "bucket"]


class Message(BaseModel):
    """Base for bus messages: frozen, versioned, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes | str):
        return cls.model_validate_json(data)


class BlobRef(Message):
    bucket: str
    name: str
    generation: str | None = None

    def __str__(self) -> str:  # gs://bucket/name#generation, for logs and records
        gen = f"#{self.generation}" if self.generation else ""
        return f"gs://{self.bucket}/{self.name}{gen}"

    @classmethod
    def parse(cls, text: str) -> "BlobRef":
        """The reference :meth:`__str__` wrote (as exception records keep it)."""
        if not text.startswith("gs://") or "/" not in text[5:]:
            raise ValueError(f"not a gs:// object reference: {text!r}")
        bucket, _, rest = text[5:].partition("/")
        name, _, generation = rest.partition("#")
        return cls(bucket=bucket, name=name, generation=generation or None)


_META_PREFIX = "axiom-"
# The actions whose values come from outside the instance: resolved by the crosswalk stage
LOOKUP_ACTIONS = frozenset({"crosswalk", "ai_standardize"})


class IngestMetadata(Message):
    """How an instance arrived. Stored with the ingested object (GCS custom metadata
    or the local store's metadata table), so it travels with the bytes and not in a side channel."""

    source_type: SourceType = "bucket"
    source_id: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    peer_ip: str = ""
    received_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    sha256: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""

    def to_blob_metadata(self) -> dict[str, str]:
        data = self.model_dump(mode="json")
        return {f"{_META_PREFIX}{k}": str(v) for k, v in data.items() if v not in ("", None)}

    @classmethod
    def from_blob_metadata(cls, metadata: dict[str, str] | None) -> "IngestMetadata":
        metadata = metadata or {}
        plen = len(_META_PREFIX)
        fields = {k[plen:]: v for k, v in metadata.items() if k.startswith(_META_PREFIX)}
        return cls.model_validate({k: v for k, v in fields.items() if k in cls.model_fields})


class ObjectFinalized(Message):
    """A new object in the ingest bucket: the GCS OBJECT_FINALIZE notification,
    reduced to what the match stage needs. The local blob store emits the same."""

    v: Literal[1] = 1
    blob: BlobRef
    metadata: dict[str, str] = Field(default_factory=dict)


class RuleRef(Message):
    ruleset_id: str
    rule_id: str


LookupSource = Literal["table", "miss", "cache", "model", "fallback", "deterministic"]


class Lookup(Message):
    """One answer the crosswalk stage resolved for a plan: for the ``crosswalk`` or
    ``ai_standardize`` action at index ``action``, the key it read (one value, or the
    values of the action's ``key_tags``) and the value to write (None: keep the value).
    ``source``: ``table`` (the map had it), ``miss`` (the map's policy answered), or the
    standardizer's ``cache``, ``model``, ``fallback`` or ``deterministic`` (no model
    configured). These are the figures of the
    status counters (:func:`shared.counters.count_lookups`) and of the rule test."""

    action: int
    key: list[str]
    value: str | None
    source: LookupSource
    cached: bool = False  # a crosswalk answer from the map's cache, not its database
    latency_ms: int | None = None  # a model call's


class Plan(Message):
    """What match decided for one received instance. ``lookups``: None until the
    crosswalk stage resolved the plan's ``crosswalk`` and ``ai_standardize`` actions
    (a plan without such actions never needs it); morph writes those answers and calls
    no database or model itself."""

    v: Literal[1] = 1
    blob: BlobRef
    ingest: IngestMetadata
    sop_instance_uid: str
    matched: list[RuleRef] = Field(default_factory=list)
    actions: list[dict[str, Any]] = Field(default_factory=list)
    destination_ids: list[str] = Field(default_factory=list)
    log_original_attributes: bool = False
    lookups: list[Lookup] | None = None
    recheck_misses: bool = False  # held or failed on a miss: when retried, misses are not taken from a cache

    @property
    def needs_lookups(self) -> bool:
        """Whether an action looks a value up (``crosswalk``, ``ai_standardize``)."""
        return any(action.get("action") in LOOKUP_ACTIONS for action in self.actions)

    @property
    def unresolved(self) -> bool:
        return self.lookups is None and self.needs_lookups


class Delivery(Message):
    """One morphed object for one destination.

    ``sha256`` is the object's content digest (:func:`shared.dicom.io.content_digest`):
    the data set without file meta, and, when ``original_attributes_added``, without
    the modification time of the Original Attributes item this pass added. A resend of
    the same data set under the same rules has the same digest, so it is a duplicate
    at every destination rather than a conflict."""

    v: Literal[1] = 1
    sop_instance_uid: str
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    destination_id: str
    blob: BlobRef
    sha256: str
    original_attributes_added: bool = False
    source: BlobRef
    ingest: IngestMetadata

    @property
    def idempotency_key(self) -> str:
        """(SOP Instance UID, destination id, content digest of the morphed object),
        hashed to a fixed-length id usable as a Firestore document id."""
        raw = f"{self.sop_instance_uid}|{self.destination_id}|{self.sha256}"
        return hashlib.sha256(raw.encode()).hexdigest()


class DeadLetter(Message):
    """A message a stage gave up on, on its way to becoming an exception record."""

    v: Literal[1] = 1
    topic: str
    body: str
    attempts: int
    last_error: str = ""


# The topics, each with the message it carries: the stage topics of both runtimes (Pub/Sub
# topics ``{prefix}{name}`` in GCP, queue topics locally) and where a retried exception
# record's message goes back to.
TOPIC_INGEST = "ingest"  # ObjectFinalized: the ingest bucket's notifications -> match
TOPIC_CROSSWALK = "crosswalk"  # Plan with lookups to resolve -> crosswalk
TOPIC_PLANNED = "planned"  # Plan -> morph
TOPIC_DELIVER = "deliver"  # Delivery -> route
TOPIC_DEAD_LETTER = "dead-letter"  # DeadLetter -> dead_letter
MESSAGE_OF_TOPIC: dict[str, type[Message]] = {
    TOPIC_INGEST: ObjectFinalized,
    TOPIC_CROSSWALK: Plan,
    TOPIC_PLANNED: Plan,
    TOPIC_DELIVER: Delivery,
    TOPIC_DEAD_LETTER: DeadLetter,
}
TOPICS = tuple(MESSAGE_OF_TOPIC)
