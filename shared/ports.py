"""The ports the stages use, and :class:`Ports`, the bundle a runtime hands them.
Each port has a local adapter and a GCP adapter under ``shared/adapters/`` (see
docs/architecture.md); stages receive them as arguments, never import them."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from shared.messages import BlobRef, Delivery, Message

if TYPE_CHECKING:
    from shared.config import AppConfig


class BlobStore(Protocol):
    def put_file(self, bucket: str, name: str, path: Path, metadata: dict[str, str] | None = None,
                 *, move: bool = False) -> BlobRef:
        """Store ``path`` durably; return only once the object survives a crash.
        ``move`` lets a local store take the file instead of copying it."""

    def local_path(self, ref: BlobRef, *, last_read: bool = False) -> AbstractContextManager[Path]:
        """A readable local file with the object's bytes, valid inside the block.
        ``last_read``: the caller is the object's last reader in the pipeline, so a
        store that caches it locally may let the cached copy go afterwards."""

    def metadata(self, ref: BlobRef) -> dict[str, str]: ...

    def copy(self, ref: BlobRef, bucket: str, name: str) -> BlobRef: ...

    def delete(self, ref: BlobRef) -> None: ...

    def exists(self, ref: BlobRef) -> bool: ...

    def set_hold(self, ref: BlobRef, held: bool) -> None:
        """Keep the object from retention's deletion (``held``) or let it go again; an
        object gone already is no error. Called by shared/holds.py only, for the objects
        of open exception records."""


ID = "__id__"  # DocumentStore.query: order by (and bound) the document id


class DocumentStore(Protocol):
    """Documents by (collection, id): config, exception records, poller state."""

    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None: ...

    def set(self, collection: str, doc_id: str, doc: dict[str, Any]) -> None: ...

    def create(self, collection: str, doc_id: str, doc: dict[str, Any]) -> bool:
        """Create-if-absent: write ``doc`` only if no document has this id, and say
        whether it was written. Atomic: of concurrent creates of one id (threads or
        processes), exactly one returns True. Used to claim work (leases, notifications)."""

    def delete(self, collection: str, doc_id: str) -> None: ...

    def compare_and_set(self, changes: "list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]]") -> bool:
        """Apply every ``(collection, doc_id, expected, new)`` of ``changes`` only if each
        stored document still equals its ``expected`` (None: absent), all at once or
        none; ``new`` None deletes. False when one no longer matched (a lost race)."""

    def list(self, collection: str) -> dict[str, dict[str, Any]]: ...

    def query(self, collection: str, *, where: dict[str, Any] | None = None, order_by: str = ID,
              descending: bool = False, at_least: Any = None, below: Any = None,
              after: tuple[Any, str] | None = None, limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """``(id, document)`` pairs of the documents whose fields equal ``where``'s values,
        ordered by ``order_by`` (a top-level field, or :data:`ID`) then by id, ascending
        or ``descending``; only those whose ``order_by`` value is ``>= at_least`` and
        ``< below`` (either None: unbounded); starting after the position ``after``
        (the ``order_by`` value and id of the last document of the previous page); at
        most ``limit``. A document without the ``order_by`` field is never returned.
        Served by an index (:mod:`shared.indexes` lists the ones the lists need), so a
        page costs its own size, not the collection's. (Firestore cannot scan ids
        descending without an equality filter: sort by a field then.)"""

    def count(self, collection: str, where: dict[str, Any] | None = None) -> int:
        """How many documents of ``collection`` have fields equal to ``where``'s values
        (None: all), without reading them (an index count or a count aggregation)."""

    def increment(self, collection: str, doc_id: str, counts: dict[str, int],
                  fields: dict[str, Any] | None = None) -> None:
        """Add ``counts`` to the document's numeric fields (absent: 0; the document is
        created if absent) and set ``fields``, atomically across threads and processes.
        The status counters (``shared/counters.py``)."""

    def increment_many(self, collection: str,
                       changes: dict[str, tuple[dict[str, int], dict[str, Any] | None]]) -> None:
        """:meth:`increment` of several documents (id -> (counts, fields)) in one write:
        one transaction, one batch commit."""


class Claim(str, Enum):
    CLAIMED = "claimed"  # this caller may send
    DELIVERED = "delivered"  # already delivered: acknowledge, do not send again
    BUSY = "busy"  # another worker is sending right now: retry later


class DeliveryLedger(Protocol):
    """Idempotency records for deliveries, keyed by Delivery.idempotency_key."""

    def claim(self, key: str, lease_s: float, info: dict[str, Any]) -> Claim: ...

    def mark_delivered(self, key: str, info: dict[str, Any]) -> None: ...

    def release(self, key: str) -> None: ...


class Bus(Protocol):
    def publish(self, topic: str, message: Message) -> None:
        """Durably hand ``message`` to ``topic``; returns once it cannot be lost."""


class Secrets(Protocol):
    """Config names a secret by reference, never holds it: ``env:NAME`` (an environment
    variable), ``file:/path`` (a file, e.g. a mounted Cloud Run secret),
    ``gsm:projects/P/secrets/S/versions/V`` (Google Secret Manager). A reference that
    cannot be read raises :class:`shared.errors.SecretError`, naming the reference,
    never the value."""

    def get(self, ref: str) -> bytes: ...

    def text(self, ref: str) -> str:
        """The secret as text, surrounding whitespace removed (a file's newline)."""


class Senders(Protocol):
    """The process's destination senders (shared.destinations.Senders)."""

    def send(self, dest: Any, path: Path, delivery: Delivery) -> str:
        """Send ``path`` to ``dest``; return where it went. Raises RetryLater or
        DeliveryRefused (shared.errors)."""

    def close(self) -> None: ...


@dataclass
class Ports:
    """What a stage, an input or an exception operation works over. Built once per
    process by a runtime (shared/runtime/)."""

    blobs: BlobStore
    docs: DocumentStore
    ledger: DeliveryLedger
    bus: Bus
    config: Callable[[], "AppConfig"]
    senders: Senders
    secrets: Secrets
