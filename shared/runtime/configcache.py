"""Config read from the DocumentStore, cached so stages do not read every document for
every instance, while edits still take effect quickly: reloaded when its revision
(``config_meta/revision``, replaced by every config write: shared.config.store)
changes, when ``watch_revision`` (one small read per use: the embedded runtime, where
a change applies to the next instance), and at the latest after ``ttl_s``."""

from __future__ import annotations

import threading
import time

from shared.config import CONFIG_COLLECTIONS, AppConfig, from_documents
from shared.config.store import REVISION
from shared.ports import DocumentStore


def load_config(docs: DocumentStore) -> AppConfig:
    return from_documents({c: docs.list(c) for c in CONFIG_COLLECTIONS})


class CachedConfig:
    def __init__(self, docs: DocumentStore, ttl_s: float = 5.0, *, watch_revision: bool = False):
        self.docs = docs
        self.ttl_s = ttl_s
        self.watch_revision = watch_revision
        self._lock = threading.Lock()
        self._value: AppConfig | None = None
        self._revision = None
        self._loaded_at = 0.0

    def __call__(self) -> AppConfig:
        with self._lock:
            revision = self.docs.get(*REVISION) if self.watch_revision else None
            if (self._value is None or revision != self._revision
                    or time.monotonic() - self._loaded_at > self.ttl_s):
                self._value = load_config(self.docs)  # read after the revision: never older than it
                self._revision = revision
                self._loaded_at = time.monotonic()
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
