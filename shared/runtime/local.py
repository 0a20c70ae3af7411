"""The embedded runtime: gateway, stages and HTTP endpoints in one process, with no
cloud at all. Layout of the data dir:

    blobs/<bucket>/...   ingest, processed and quarantine objects (+ .meta sidecars)
    state.db             config documents, delivery ledger, exception records
    queue.db             the durable message queue and its dead letters
    tmp/                 C-STORE datasets being received (same filesystem: renamed, not copied)
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path

from werkzeug.serving import make_server

from scp_gateway.gateway import Gateway
from shared import stages
from shared.adapters.local_blobs import LocalBlobStore
from shared.adapters.local_queue import DEAD_LETTER_TOPIC, LocalQueue, Subscription
from shared.adapters.sqlite import SQLiteDatabase, SQLiteDeliveryLedger, SQLiteDocumentStore
from shared.config import AppConfig, to_documents
from shared.destinations import Senders
from shared.http import create_app
from shared.ingest import Ingestor
from shared.messages import DeadLetter, Delivery, ObjectFinalized, Plan
from shared.runtime.configcache import CachedConfig
from shared.secrets import Secrets
from shared.sources.scheduler import SourceScheduler

log = logging.getLogger(__name__)

TOPIC_INGEST = "ingest"


class EmbeddedRuntime:
    def __init__(self, config: AppConfig, data_dir: Path, *, http_host: str = "127.0.0.1",
                 http_port: int | None = 8080, route_workers: int = 4):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.data_dir / "tmp"
        # Anything left here was being received when the last run died and was never
        # answered Success: the sender still has it and will send it again.
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # pynetdicom writes received datasets with NamedTemporaryFile; keeping them on the
        # data dir's filesystem lets the gateway rename instead of copy.
        tempfile.tempdir = str(tmp)

        db = SQLiteDatabase(self.data_dir / "state.db")
        self.docs = SQLiteDocumentStore(db)
        self.docs.replace_collections(to_documents(config))
        self.ledger = SQLiteDeliveryLedger(db)
        self.queue = LocalQueue(self.data_dir / "queue.db")
        self.config = CachedConfig(self.docs)
        settings = config.settings
        self.blobs = LocalBlobStore(
            self.data_dir / "blobs",
            on_finalize=lambda event: self.queue.publish(TOPIC_INGEST, event),
            notify_buckets=frozenset({settings.ingest_bucket}),
        )
        self.secrets = Secrets()
        self.ports = stages.Ports(blobs=self.blobs, docs=self.docs, ledger=self.ledger, bus=self.queue.from_handlers(),
                                  config=self.config, base_dir=self.data_dir,
                                  senders=Senders(base_dir=self.data_dir, secrets=self.secrets))
        p = self.ports
        stage_attempts = settings.stage_max_attempts
        self.queue.subscribe(Subscription(TOPIC_INGEST, lambda b, a: stages.match(p, ObjectFinalized.from_bytes(b)),
                                          workers=2, max_attempts=stage_attempts))
        self.queue.subscribe(Subscription(stages.TOPIC_PLANNED, lambda b, a: stages.morph(p, Plan.from_bytes(b)),
                                          workers=2, max_attempts=stage_attempts))
        # route gives up per destination itself (destination retry policy); the queue's
        # limit is only a backstop for bugs.
        self.queue.subscribe(Subscription(stages.TOPIC_DELIVER, lambda b, a: stages.route(p, Delivery.from_bytes(b), a),
                                          workers=route_workers, max_attempts=100))
        self.queue.subscribe(Subscription(DEAD_LETTER_TOPIC, lambda b, a: stages.dead_letter(p, DeadLetter.from_bytes(b)),
                                          workers=1, max_attempts=1000))
        ingestor = Ingestor(self.blobs, settings.ingest_bucket)
        self.gateway = Gateway(config.listeners, ingestor, secrets=self.secrets, sources=lambda: self.config().sources)
        self.sources = SourceScheduler(self.config, ingestor, self.docs, self.secrets, tmp_dir=tmp)
        app = create_app(self.ports, self.status, secrets=self.secrets)
        self._http = make_server(http_host, http_port, app, threaded=True) if http_port is not None else None
        self._http_thread: threading.Thread | None = None

    def status(self) -> dict:
        exceptions = self.docs.list(stages.EXCEPTIONS)
        return {
            "queue": {t: self.queue.pending(t)
                      for t in (TOPIC_INGEST, stages.TOPIC_PLANNED, stages.TOPIC_DELIVER, DEAD_LETTER_TOPIC)},
            "deliveries": self.ledger.counts(),
            "exceptions": len(exceptions),
            "listeners": {lsn.id: port for lsn, port in zip(self.gateway.listeners, self.gateway.ports)},
            "sources": self.sources.status(),
        }

    def start(self) -> None:
        expired = self.ledger.expire_all_leases()
        if expired:
            log.warning("%d delivery(ies) were being sent when the previous run died; they will be"
                        " sent again and are marked in doubt", expired)
        self.queue.start()
        self.gateway.start()
        self.sources.start()  # after the gateway: C-MOVE retrievals arrive there
        if self._http:
            self._http_thread = threading.Thread(target=self._http.serve_forever, name="http", daemon=True)
            self._http_thread.start()
            log.info("HTTP on http://%s:%d", self._http.host, self._http.port)

    def stop(self) -> None:
        self.sources.stop()
        self.gateway.stop()
        if self._http:
            self._http.shutdown()
        self.queue.stop()
        self.ports.senders.close()
