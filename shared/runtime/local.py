"""The embedded runtime: gateway, stages and HTTP endpoints with no cloud at all.

By default everything runs in one process (``axiom-flow serve`` asks for child
processes when there is more than one core: shared/cli.py). With ``pipeline_processes``
> 0 the stage workers run in that many child processes instead (same data dir, same code), so the
gateway's receive loop and the pipeline use separate cores rather than sharing one
interpreter lock; with ``route_processes`` > 0 route's workers run in child processes
of their own, and the others no longer route. The children die with the parent
(PR_SET_PDEATHSIG).

Layout of the data dir:

    blobs/<bucket>/...   ingest, processed and quarantine objects
    blobs/.metadata.db   their metadata (how each instance arrived)
    state.db             config documents, delivery ledger, exception records
    queue.db             the durable message queue and its dead letters
    tmp/                 datasets being received (same filesystem: renamed, not copied)
    trash/               objects past their retention age, unlinked gradually (shared/runtime/retention.py)
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import ssl
import tempfile
import threading
from pathlib import Path

from shared import counters, exceptions, logs, stages
from shared.adapters.local_blobs import LocalBlobStore
from shared.adapters.local_queue import LocalQueue, Subscription
from shared.adapters.secrets import LocalSecrets
from shared.adapters.sqlite import SQLiteDatabase, SQLiteDeliveryLedger, SQLiteDocumentStore
from shared.config import AppConfig
from shared.config.store import ConfigStore, load_config_file
from shared.destinations import Senders
from shared.dicom import reactor
from shared.http import HostCheck, HttpServer, create_app
from shared.inputs.cstore.follow import follow_listeners
from shared.inputs.cstore.gateway import Gateway
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers.scheduler import SourceScheduler
from shared.messages import (
    TOPIC_CROSSWALK,
    TOPIC_DEAD_LETTER,
    TOPIC_DELIVER,
    TOPIC_INGEST,
    TOPIC_PLANNED,
    TOPICS,
    DeadLetter,
    Delivery,
    ObjectFinalized,
    Plan,
)
from shared.ports import Ports
from shared.runtime.configcache import CachedConfig
from shared.runtime.retention import Retention

log = logging.getLogger(__name__)

# how often held deliveries are checked against the config (a destination enabled again)
RELEASE_HELD_EVERY_S = 10.0
# how often the listeners are compared with the config (one read of its revision)
FOLLOW_LISTENERS_EVERY_S = 1.0


class _Stores:
    """The local adapters over one data dir; built the same way in every process."""

    def __init__(self, data_dir: Path, *, notify: bool, poll_s: float = 0.5):
        db = SQLiteDatabase(data_dir / "state.db")
        self.docs = SQLiteDocumentStore(db)
        self.ledger = SQLiteDeliveryLedger(db)
        self.queue = LocalQueue(data_dir / "queue.db", poll_s=poll_s)
        self.config = CachedConfig(self.docs, watch_revision=True)  # a change applies to the next instance
        self.secrets = LocalSecrets()
        self.data_dir = data_dir
        self.blobs = LocalBlobStore(
            data_dir / "blobs",
            on_finalize=(lambda event: self.queue.publish(TOPIC_INGEST, event)) if notify else None,
            notify_buckets=frozenset({self.config().settings.ingest_bucket}) if notify else frozenset(),
        )
        # every publish through these ports is fsynced (HTTP retries, releases of held
        # deliveries); the stage workers' ports publish through the queue's handler bus
        self.ports = Ports(blobs=self.blobs, docs=self.docs, ledger=self.ledger, bus=self.queue,
                           config=self.config, senders=Senders(base_dir=data_dir, secrets=self.secrets),
                           secrets=self.secrets)
        self.stage_ports = dataclasses.replace(self.ports, bus=self.queue.from_handlers())

    def subscribe_stages(self, route_workers: int, *, prepare: bool = True, route: bool = True) -> None:
        """Workers for match, morph and dead letters (``prepare``) and for route."""
        p, q = self.stage_ports, self.queue
        attempts = self.config().settings.stage_max_attempts
        if prepare:
            q.subscribe(Subscription(TOPIC_INGEST, lambda b, a: stages.match(p, ObjectFinalized.from_bytes(b)),
                                     workers=2, max_attempts=attempts))
            # a database outage is waited out (settings.lookup_max_attempts), not dead-lettered in seconds
            q.subscribe(Subscription(TOPIC_CROSSWALK, lambda b, a: stages.crosswalk(p, Plan.from_bytes(b)),
                                     workers=2, max_attempts=self.config().settings.lookup_max_attempts))
            q.subscribe(Subscription(TOPIC_PLANNED, lambda b, a: stages.morph(p, Plan.from_bytes(b)),
                                     workers=2, max_attempts=attempts))
            q.subscribe(Subscription(TOPIC_DEAD_LETTER, lambda b, a: stages.dead_letter(p, DeadLetter.from_bytes(b)),
                                     workers=1, max_attempts=1000))
        if route:
            # route gives up per destination itself (its retry policy); the queue's limit
            # is only a backstop for bugs
            q.subscribe(Subscription(TOPIC_DELIVER, lambda b, a: stages.route(p, Delivery.from_bytes(b), a),
                                     workers=route_workers, max_attempts=100))


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the child notices the parent is gone when its pipe closes


def _pipeline_process(data_dir: str, route_workers: int, log_level: int, parent_pid: int,
                      prepare: bool = True, route: bool = True, log_format: logs.LogFormat = "text") -> None:
    """A child process running stage workers (see EmbeddedRuntime)."""
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    # as the parent's (no tag values), naming this child in each line
    logs.configure(log_level, log_format, process_label="pipeline" if prepare else "route")
    reactor.install()  # before the first association: they wait for work, not for the clock
    tempfile.tempdir = str(Path(data_dir) / "tmp")
    stores = _Stores(Path(data_dir), notify=False, poll_s=0.05)
    stores.subscribe_stages(route_workers, prepare=prepare, route=route)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    stores.queue.start(release_leases=False)  # the parent released them before starting us
    stop.wait()
    stores.queue.stop()
    stores.ports.senders.close()


def _spans_dimse(config: AppConfig) -> bool:
    """Whether a spanner asks a DIMSE source (its C-FINDs run in worker processes)."""
    dimse = {s.id for s in config.sources if s.type == "dimse_poller"}
    return any(m.source in dimse for spanner in config.spanners for m in spanner.sources)


def _load_config(docs, config: AppConfig, name: str) -> None:
    """Store the config to run: ``config`` (serve's file) when nothing is stored or the
    file changed since it was last loaded; else the stored one stays, with what the API
    and imports changed (:func:`shared.config.store.load_config_file`)."""
    outcome, replaced = load_config_file(docs, config, name=name)
    if outcome == "replaced":
        from types import SimpleNamespace

        from shared.api.audit import record

        record(SimpleNamespace(docs=docs), None, "config.import", "config", before=replaced,
               after=ConfigStore(docs).export_yaml())
        log.warning("config: %s changed since it was last loaded, so it replaced the stored config "
                    "(GET /api/v1/audit has the config it replaced)", name)
    elif outcome == "kept":
        log.info("config: the stored one, with any change made through the API or an import since %s was "
                 "loaded; %s is loaded again only once it changes (or: axiom-flow config import)", name, name)


class EmbeddedRuntime:
    def __init__(self, config: AppConfig, data_dir: Path, *, http_host: str = "127.0.0.1",
                 http_port: int | None = 8080, route_workers: int = 4, pipeline_processes: int = 0,
                 route_processes: int = 0, poll_sources: bool = True, http_allowed_hosts: list[str] = (),
                 http_tls: ssl.SSLContext | None = None, config_name: str = "the config given"):
        reactor.install()  # before the first association: they wait for work, not for the clock
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

        _load_config(SQLiteDocumentStore(SQLiteDatabase(self.data_dir / "state.db")), config, config_name)
        self.stores = _Stores(self.data_dir, notify=True)
        self.docs, self.ledger, self.queue = self.stores.docs, self.stores.ledger, self.stores.queue
        self.config, self.blobs, self.secrets = self.stores.config, self.stores.blobs, self.stores.secrets
        self.ports = self.stores.ports
        config = self.config()  # the one loaded or kept above
        self.route_workers = route_workers
        self.poll_sources = poll_sources
        self.pipeline_processes = pipeline_processes
        self.route_processes = route_processes
        self.stores.subscribe_stages(route_workers, prepare=pipeline_processes == 0,
                                     route=pipeline_processes == 0 and route_processes == 0)
        self._children: list[multiprocessing.Process] = []

        ingestor = Ingestor(self.blobs, config.settings.ingest_bucket)
        self.gateway = Gateway(config.listeners, ingestor, secrets=self.secrets, sources=lambda: self.config().sources,
                               spanners=lambda: self.config().spanners,
                               min_free_bytes=config.settings.min_free_bytes, spool_dir=tmp, docs=self.docs)
        self.sources = SourceScheduler(self.config, ingestor, self.docs, self.secrets, tmp_dir=tmp)
        # HTTP: waitress with timeouts and a connection limit (shared/http.py); the API
        # answers only for this server's own names (DNS rebinding) and shows self.status
        host_check = HostCheck(http_host, http_port, http_allowed_hosts)
        app = create_app(self.ports, self.status, host_check=host_check)
        self._http = (HttpServer(app, http_host, http_port, max_request_body=config.stow.max_request_bytes,
                                 tls=http_tls) if http_port is not None else None)
        if self._http:
            host_check.port = self._http.port  # port 0: the one the system chose
        exceptions.backfill_archived(self.docs)  # records of older versions: into the indexed lists
        self.retention = Retention(self.blobs, self.docs, self.queue, lambda: self.config().settings,
                                   self.data_dir / "trash")
        self._stopping = threading.Event()
        self._release_thread: threading.Thread | None = None
        self._retention_thread: threading.Thread | None = None
        self._listeners_thread: threading.Thread | None = None
        self._crosswalk_sync_thread: threading.Thread | None = None

    def status(self) -> dict:
        """The embedded runtime's own status (``runtime`` of ``GET /api/v1/status``):
        counts from the status counters and from indexes (queue depth, claims in flight,
        exception records), never a read of every record; ``deliveries.delivered`` is
        the destinations' ``delivered`` counters."""
        destinations = counters.snapshot(self.ports)["destinations"]
        return {
            "queue": {t: self.queue.pending(t) for t in TOPICS},
            "deliveries": {"delivered": sum(d["delivered"] for d in destinations.values()),
                           **self.ledger.in_flight()},
            "exceptions": self.docs.count(exceptions.EXCEPTIONS),
            "listeners": self.gateway.ports,  # None: cannot listen (gateway.listener_errors says why)
            "gateway": self.gateway.status(),  # free space against settings.min_free_bytes, connections
            "sources": self.sources.status(),
            "pipeline_processes": [c.pid for c in self._children if c.is_alive()],
            "retention": self.retention.status(),
        }

    def start(self) -> None:
        expired = self.ledger.expire_all_leases()
        if expired:
            log.warning("%d delivery(ies) were being sent when the previous run died; they will be"
                        " sent again and are marked in doubt", expired)
        self.queue.start()  # releases every lease of the previous run
        ctx = multiprocessing.get_context("spawn")
        shapes = ([("pipeline", True, self.route_processes == 0)] * self.pipeline_processes
                  + [("route", False, True)] * self.route_processes)
        for n, (name, prepare, route) in enumerate(shapes):
            child = ctx.Process(target=_pipeline_process, name=f"axiom-{name}-{n}", daemon=True,
                                args=(str(self.data_dir), self.route_workers, logging.getLogger().level, os.getpid(),
                                      prepare, route, logs.current_format()))
            child.start()
            self._children.append(child)
        self.gateway.start()  # a listener that cannot listen at start stops serve: the YAML is to fix
        self._stopping.clear()
        self._release_thread = threading.Thread(target=self._release_held, name="release-held", daemon=True)
        self._release_thread.start()
        self._retention_thread = threading.Thread(target=self.retention.run, args=(self._stopping,),
                                                  name="retention", daemon=True)
        self._retention_thread.start()
        # database crosswalk maps with `sync` copied into state.db when due (shared/crosswalk_sync.py)
        try:
            from shared.crosswalk_sync import CrosswalkSyncer
        except ImportError as exc:  # without the databases extra there is no database map to sync
            log.info("crosswalk syncs off: %s is not installed (the `databases` extra)", exc.name)
        else:
            self._crosswalk_sync_thread = threading.Thread(
                target=CrosswalkSyncer(self.docs, self.config, self.secrets).run, args=(self._stopping,),
                name="crosswalk-sync", daemon=True)
            self._crosswalk_sync_thread.start()
        # listeners open, close and change with the config, without a restart
        self._listeners_thread = threading.Thread(
            target=follow_listeners, args=(self.gateway, self.config, self._stopping, FOLLOW_LISTENERS_EVERY_S),
            name="follow-listeners", daemon=True)
        self._listeners_thread.start()
        if self.poll_sources:
            self.sources.start()  # after the gateway: C-MOVE retrievals arrive there
        if _spans_dimse(self.config()):
            from shared.spanner import workers

            workers.warm()
        if self._http:
            self._http.start()
            log.info("HTTP on %s", self._http.url)

    def _release_held(self) -> None:
        """Deliveries held for a disabled destination go out once it is enabled again."""
        while True:
            try:
                exceptions.release_held(self.ports)
            except Exception:  # noqa: BLE001 - try again on the next round
                log.exception("releasing held deliveries failed")
            if self._stopping.wait(RELEASE_HELD_EVERY_S):
                return

    def stop(self) -> None:
        self._stopping.set()
        for thread in (self._release_thread, self._retention_thread, self._listeners_thread,
                       self._crosswalk_sync_thread):
            if thread:
                thread.join(10)
        self.sources.stop()
        self.gateway.stop()
        if self._http:  # also when never started: its socket is bound and its threads run
            self._http.stop()
        for child in self._children:
            child.terminate()
        for child in self._children:
            child.join(15)
            if child.is_alive():
                child.kill()
        self._children.clear()
        self.queue.stop()
        self.ports.senders.close()
