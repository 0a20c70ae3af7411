"""Destinations: one sender per configured destination, built lazily and rebuilt when
its config changes. A sender's ``send(path, delivery)`` returns where the instance
went, or raises :class:`~shared.errors.RetryLater` (worth retrying: peer down,
timeout, failure status) or :class:`~shared.errors.DeliveryRefused` (retrying cannot
help: a conflicting instance, an unsupported SOP class or transfer syntax)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol

from shared.errors import RetryLater
from shared.messages import Delivery
from shared.ports import Secrets

SLOT_WAIT_S = 30.0  # a send waits this long for a free slot before trying again later


class Sender(Protocol):
    def send(self, path: Path, delivery: Delivery) -> str: ...

    def close(self) -> None: ...


# One builder per destination ``type`` of :data:`shared.config.Destination`. Each imports
# its sender's module when called, so a process loads pynetdicom, httpx or the GCS client
# only when a destination of that type is configured.


def _filesystem_sender(dest, secrets: Secrets, base_dir: Path) -> Sender:
    from shared.destinations.filesystem import FilesystemSender

    return FilesystemSender(dest, base_dir)


def _cstore_sender(dest, secrets: Secrets, base_dir: Path) -> Sender:
    from shared.destinations.cstore import CStoreSender

    return CStoreSender(dest, secrets)


def _dicomweb_sender(dest, secrets: Secrets, base_dir: Path) -> Sender:
    from shared.destinations.dicomweb import DicomWebSender

    return DicomWebSender(dest, secrets)


def _gcs_sender(dest, secrets: Secrets, base_dir: Path) -> Sender:
    from shared.destinations.gcs import GCSSender

    return GCSSender(dest)


SENDERS: dict[str, Callable[..., Sender]] = {
    "filesystem": _filesystem_sender,
    "cstore": _cstore_sender,
    "dicomweb": _dicomweb_sender,
    "healthcare": _dicomweb_sender,  # a Healthcare API DICOM store speaks STOW-RS
    "gcs": _gcs_sender,
}


def build_sender(dest, *, secrets: Secrets, base_dir: Path) -> Sender:
    try:
        build = SENDERS[dest.type]
    except KeyError:
        raise TypeError(f"no sender for destination type {dest.type!r}") from None
    return build(dest, secrets, base_dir)


class Senders:
    """The process's senders and per-destination concurrency limits (``max_concurrency``
    sends in flight per destination in this process)."""

    def __init__(self, *, base_dir: Path, secrets: Secrets):
        self.base_dir = base_dir
        self.secrets = secrets
        self._lock = threading.Lock()
        self._senders: dict[str, tuple[object, Sender, threading.BoundedSemaphore]] = {}
        self._closed = threading.Event()
        threading.Thread(target=self._reap, name="senders-reaper", daemon=True).start()

    def _reap(self) -> None:
        """Let senders release idle connections even when no new work arrives."""
        while not self._closed.wait(1.0):
            with self._lock:
                senders = [sender for _, sender, _ in self._senders.values()]
            for sender in senders:
                reap = getattr(sender, "reap", None)
                if reap:
                    reap()

    def _entry(self, dest):
        with self._lock:
            entry = self._senders.get(dest.id)
            if entry is None or entry[0] != dest:
                if entry is not None:
                    entry[1].close()
                sender = build_sender(dest, secrets=self.secrets, base_dir=self.base_dir)
                entry = self._senders[dest.id] = (dest, sender, threading.BoundedSemaphore(dest.max_concurrency))
            return entry

    @contextmanager
    def slot(self, dest) -> Iterator[Sender]:
        _, sender, slots = self._entry(dest)
        if not slots.acquire(timeout=SLOT_WAIT_S):
            raise RetryLater(f"{dest.id}: all {dest.max_concurrency} send slots busy", delay_s=1.0)
        try:
            yield sender
        finally:
            slots.release()

    def send(self, dest, path: Path, delivery: Delivery) -> str:
        with self.slot(dest) as sender:
            return sender.send(path, delivery)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            entries, self._senders = self._senders, {}
        for _, sender, _ in entries.values():
            sender.close()
