"""Retention in the embedded runtime: objects past their age are deleted once settled.

An object is **settled** when nothing may read it again: no message in the queue names
it (a stage still to run, a delivery being tried or waiting for its retry, a dead
letter not yet recorded) and no open exception record does (held, failed or refused,
until an operator archives it; a ``retried`` record's message is in the queue or has
settled). The pipeline only ever hands an object on by writing the next message or
record before acknowledging the one it handled, so an object seen unreferenced stays
so; the references are read records, queue, records again, which catches an object
moving between the two during the read. Quarantined objects cannot be retried: they
are kept for ``quarantine_days`` whatever their record says (the record stays).

Deleting is two steps. A sweep moves the settled objects past their age out of their
bucket into ``trash/`` (renames: the object is gone from the bucket at once, no inode
is freed yet), then a low-priority thread unlinks the trash at ``max_deletes_per_s``.
On this ext4 without a journal, creating a file skips every inode deleted in the last
minutes (``recently_deleted()`` in ``find_inode_bit()``): a burst of thousands of
unlinks made every C-STORE's file creation slow for minutes
(bench/results/route.md, bench/results/retention.md). A sweep never lists today's
date directories, where new objects arrive. A crash leaves files in the trash (they are
unlinked after the restart) or an object without its metadata row (moved by the next
sweep); never a record of something needed whose file is gone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from shared.adapters.local_blobs import LocalBlobStore
from shared.adapters.local_queue import LocalQueue
from shared.config import Settings
from shared.exceptions import EXCEPTIONS
from shared.holds import objects_in, objects_of_record
from shared.messages import BlobRef
from shared.ports import DocumentStore

log = logging.getLogger(__name__)

DAY_S = 86400.0
MIN_MOVES_PER_SWEEP = 1000


def is_open(record: dict) -> bool:
    """An exception record that still needs its objects: not archived, not retried (its
    message went back into the queue), not a quarantine (nothing to retry)."""
    return not record.get("archived_at") and record.get("status") not in ("retried", "quarantined")


def _refs_of_record(record: dict, into: set[tuple[str, str]]) -> None:
    into.update((ref.bucket, ref.name) for ref in objects_of_record(record))


def referenced_objects(docs: DocumentStore, queue: LocalQueue) -> set[tuple[str, str]]:
    """(bucket, name) of every object an open exception record or a queued message
    names: the objects that are not settled."""
    refs: set[tuple[str, str]] = set()

    def from_records() -> None:
        for record in docs.list(EXCEPTIONS).values():
            if is_open(record):
                _refs_of_record(record, refs)

    from_records()  # records first: a retry publishes, then marks its record retried
    for _, body in queue.queued():
        try:
            found: set[BlobRef] = set()
            objects_in(json.loads(body), found)
        except ValueError:
            continue  # not a message of ours: it names nothing here
        refs.update((ref.bucket, ref.name) for ref in found)
    from_records()  # and again: a failing delivery writes its record, then is acknowledged
    return refs


class Retention:
    """The sweeper of one data dir (see the module docstring); ``clock`` for tests."""

    def __init__(self, blobs: LocalBlobStore, docs: DocumentStore, queue: LocalQueue,
                 settings: Callable[[], Settings], trash: Path, *, clock: Callable[[], float] = time.time):
        self.blobs, self.docs, self.queue, self.settings = blobs, docs, queue, settings
        self.trash = Path(trash)
        self.trash.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.deleted = 0
        self.bytes_freed = 0
        self.kept = 0  # past their age but not settled, at the last sweep
        self.last_sweep: str | None = None
        self._lock = threading.Lock()  # one sweep at a time (the thread, a test, ...)

    def status(self) -> dict:
        return {"deleted": self.deleted, "bytes_freed": self.bytes_freed, "kept_unsettled": self.kept,
                "trash": self.trash_count(), "last_sweep": self.last_sweep}

    def trash_count(self) -> int:
        return sum(1 for _ in os.scandir(self.trash))

    def _ages(self, settings: Settings) -> dict[str, float]:
        r = settings.retention
        days = {settings.ingest_bucket: r.received_days, settings.processed_bucket: r.processed_days,
                settings.quarantine_bucket: r.quarantine_days}
        return {bucket: d * DAY_S for bucket, d in days.items() if d}  # 0 or None: kept forever

    def sweep(self, max_moves: int | None = None) -> dict[str, int]:
        """Move the settled objects past their age into the trash (at most
        ``max_moves``); return how many per bucket."""
        with self._lock:
            settings = self.settings()
            now = self.clock()
            moved: dict[str, int] = {}
            kept = past = size = 0
            budget = max_moves if max_moves is not None else 1 << 62
            refs: set[tuple[str, str]] | None = None
            for bucket, age in self._ages(settings).items():
                older_than = now - age
                old = list(self.blobs.old_objects(bucket, older_than))
                if not old:
                    continue
                if refs is None:  # read after listing: what was listed is judged by references of now
                    refs = referenced_objects(self.docs, self.queue)
                settled = [(n, s) for n, s in old if (bucket, n) not in refs]
                past += len(old)
                kept += len(old) - len(settled)
                sizes = dict(settled[:budget])
                taken = self.blobs.take_out(bucket, list(sizes), self.trash, older_than)
                budget -= len(taken)
                moved[bucket] = len(taken)
                size += sum(sizes[n] for n in taken)
            self.kept = kept
            self.last_sweep = datetime.fromtimestamp(now, timezone.utc).isoformat()
            log.info("retention sweep: %d object(s) past their age, %d not settled (kept), %s moved to the"
                     " trash (%d bytes); %d deleted so far (%d bytes)", past, kept,
                     ", ".join(f"{b}={n}" for b, n in moved.items()) or "none", size, self.deleted, self.bytes_freed)
            return moved

    def delete_from_trash(self, limit: int | None = None, *, pause_s: float = 0.0,
                          stopping: threading.Event | None = None) -> int:
        """Unlink up to ``limit`` files of the trash, ``pause_s`` apart."""
        done = 0
        for entry in os.scandir(self.trash):
            if limit is not None and done >= limit or (stopping is not None and stopping.is_set()):
                break
            try:
                size = entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            done += 1
            self.deleted += 1
            self.bytes_freed += size
            if pause_s and stopping is not None and stopping.wait(pause_s):
                break
            if pause_s and stopping is None:
                time.sleep(pause_s)
        return done

    def run(self, stopping: threading.Event) -> None:
        """The background loop: a sweep every ``sweep_every_s``, the trash unlinked at
        ``max_deletes_per_s`` in between. At a lower CPU priority than the gateway."""
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # Linux: this thread only
        except (AttributeError, OSError):
            pass
        next_sweep = 0.0
        while not stopping.is_set():
            r = self.settings().retention
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + r.sweep_every_s
                try:
                    backlog = self.trash_count()
                    room = max(MIN_MOVES_PER_SWEEP, int(r.max_deletes_per_s * r.sweep_every_s)) - backlog
                    if room > 0:
                        self.sweep(max_moves=room)
                except Exception:  # noqa: BLE001 - try again at the next sweep
                    log.exception("retention sweep failed")
            # a second's worth of unlinks at most, then look at the clock and settings again
            if not self.delete_from_trash(max(1, int(r.max_deletes_per_s)), pause_s=1.0 / r.max_deletes_per_s,
                                          stopping=stopping):
                stopping.wait(min(5.0, max(0.0, next_sweep - time.monotonic())))
