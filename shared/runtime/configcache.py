"""Config read from the DocumentStore, cached for a few seconds so stages do not read
every document for every instance, while edits still take effect quickly."""

from __future__ import annotations

import threading
import time

from shared.config import CONFIG_COLLECTIONS, AppConfig, from_documents
from shared.ports import DocumentStore


def load_config(docs: DocumentStore) -> AppConfig:
    return from_documents({c: docs.list(c) for c in CONFIG_COLLECTIONS})


class CachedConfig:
    def __init__(self, docs: DocumentStore, ttl_s: float = 5.0):
        self.docs = docs
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: AppConfig | None = None
        self._loaded_at = 0.0

    def __call__(self) -> AppConfig:
        with self._lock:
            if self._value is None or time.monotonic() - self._loaded_at > self.ttl_s:
                self._value = load_config(self.docs)
                self._loaded_at = time.monotonic()
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
