"""Timers for the embedded runtime: each enabled source is polled every ``interval_s``
(measured from the end of its previous run), never two runs of one source at once;
different sources run side by side on a small thread pool. Sources are read from the
config on every tick, so adding, disabling or retiming a source takes effect without a
restart. In GCP the same ``poll_source`` runs from a scheduled function instead.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from shared.config import AppConfig
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers.loop import poll_source
from shared.inputs.pollers.state import LOCKS, SourceState
from shared.inputs.pollers.types import PollResult
from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)


class SourceScheduler:
    def __init__(self, config_getter: Callable[[], AppConfig], ingestor: Ingestor, docs: DocumentStore,
                 secrets: Secrets, *, tmp_dir: Path | None = None, tick_s: float = 0.5, max_workers: int = 4):
        self.config_getter = config_getter
        self.ingestor = ingestor
        self.docs = docs
        self.secrets = secrets
        self.tmp_dir = tmp_dir
        self.tick_s = tick_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="poll")
        self._lock = threading.Lock()
        self._running: dict[str, Future] = {}
        self._next_due: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A lease left in the store belongs to a run of this process that died with it
        # (the embedded runtime is the only poller of its data dir): drop them.
        for source_id in self.docs.list(LOCKS):
            self.docs.delete(LOCKS, source_id)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="source-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop starting runs and wait for the ones in flight (each bounded by its
        source's network timeouts)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _sources(self):
        try:
            return [s for s in self.config_getter().sources if s.enabled]
        except Exception:
            log.exception("source scheduler: could not read the config")
            return []

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for source in self._sources():
                with self._lock:
                    if source.id in self._running or now < self._next_due.get(source.id, 0.0):
                        continue
                    self._running[source.id] = self._pool.submit(self._run, source)
            self._stop.wait(self.tick_s)

    def _run(self, source) -> PollResult | None:
        try:
            return poll_source(source, ingestor=self.ingestor, docs=self.docs, secrets=self.secrets,
                               now=datetime.now(timezone.utc), tmp_dir=self.tmp_dir)
        except Exception:  # poll_source records peer errors itself; this is a bug or a store failure
            log.exception("poll of source %s failed", source.id)
            try:
                state = SourceState.load(self.docs, source.id)
                state.last_error = f"{datetime.now(timezone.utc).isoformat()} internal error; see the log"
                state.save(self.docs)
            except Exception:
                pass
            return None
        finally:
            with self._lock:
                self._running.pop(source.id, None)
                self._next_due[source.id] = time.monotonic() + source.interval_s

    def status(self) -> dict[str, dict]:
        """Per configured source: counters, last error, last run, watermark, and whether
        a run is in flight (for the status API)."""
        out = {}
        try:
            sources = self.config_getter().sources
        except Exception:
            sources = []
        now = time.monotonic()
        for s in sources:
            st = SourceState.load(self.docs, s.id).status()
            with self._lock:
                st["running"] = s.id in self._running
                due = self._next_due.get(s.id)
            st.update(enabled=s.enabled, interval_s=s.interval_s,
                      next_run_in_s=None if due is None or not s.enabled else max(0.0, round(due - now, 1)))
            out[s.id] = st
        return out
