"""pynetdicom listeners for C-ECHO (PS3.7 9.1.5) and C-STORE (PS3.4 Annex B).

Datasets are received in chunks straight to a temporary file
(``STORE_RECV_CHUNKED_DATASET``), so memory does not grow with instance size; the
handler stores that file through the Ingestor and answers Success (0x0000) only when
the store has returned, i.e. the object is durable. A failure to write or store it
answers 0xA700 (Refused: Out of Resources, PS3.4 B.2.3) so the sender keeps the
instance and retries; so does a C-STORE that arrives while free space under the
receive directory is below ``settings.min_free_bytes``. A C-STORE whose data set is
empty is answered 0xA900 (Data Set does not match SOP Class): there is nothing to keep.

How many connections a listener takes and for how long: ``shared/inputs/cstore/server.py``;
the guards on how pynetdicom receives (PDU length, temporary files, a full disk):
``shared/inputs/cstore/receive.py``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from shared import counters
from shared.config import Listener
from shared.dicom.io import part10_layout
from shared.dicom.tls import server_context
from shared.inputs.attribution import source_for_move
from shared.inputs.cstore import receive
from shared.inputs.cstore.server import Admission, ConnectionLimits, FreeSpace, GatewayServer
from shared.inputs.ingest import Ingestor
from shared.logs import describe_error
from shared.messages import IngestMetadata
from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATA_SET_MISMATCH = 0xA900
# pynetdicom's file meta (PS3.10 7.1) for the longest UIDs is under 600 bytes: a file
# larger than this holds data set bytes
_MAX_META_FILE = 1024


def _failure(status: int, comment: str) -> Dataset:
    """A C-STORE response status with its Error Comment (0000,0902), LO: 64 characters."""
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = comment[:64]
    return rsp


def data_set_is_empty(path: Path | None) -> bool:
    """True when the peer sent no data set bytes: the received file holds only the
    file meta pynetdicom wrote, or there is no file (Command Data Set Type 0101H)."""
    if path is None:
        return True
    try:
        if Path(path).stat().st_size > _MAX_META_FILE:
            return False
        data = Path(path).read_bytes()
    except OSError:
        return False  # gone: storing it fails and says so
    offset, _ = part10_layout(data)
    return offset is not None and offset >= len(data)


def _restart_idle_timer(assoc) -> None:
    """A slow store (a large upload) is not the peer being idle: pynetdicom's network
    timeout counts from the last PDU received, and would abort the association as soon
    as the answer is out."""
    timer = getattr(getattr(assoc, "dul", None), "_idle_timer", None)
    if timer is not None:
        timer.restart()


def handle_store(event, listener: Listener, ingestor: Ingestor, sources: Callable[[], list],
                 free_space: FreeSpace | None = None):
    req = event.request
    requestor = event.assoc.requestor
    uid = str(req.AffectedSOPInstanceUID or "")
    calling_ae = requestor.ae_title.strip()
    spool = getattr(req, "_dataset_file", None)  # a receive.SpoolFile
    write_error = getattr(spool, "write_error", None)
    if write_error is not None:
        log.error("could not write %s from %s to disk (%s); answering 0xA700", uid, calling_ae,
                  write_error.strerror or type(write_error).__name__)
        return _failure(STATUS_OUT_OF_RESOURCES, "Receiver out of disk space; send again later")
    if free_space is not None and free_space.low():
        return _failure(STATUS_OUT_OF_RESOURCES, "Receiver low on disk space; send again later")
    path = event.dataset_path
    if getattr(spool, "stalled", False):
        return _failure(STATUS_DATA_SET_MISMATCH, f"No data set received within {receive.DATA_SET_WAIT_S:.0f} s")
    if data_set_is_empty(path):
        log.warning("C-STORE of %s from %s had an empty data set; answering 0xA900", uid, calling_ae)
        return _failure(STATUS_DATA_SET_MISMATCH, "Empty data set")
    # C-STORE sub-operations of a poller's C-MOVE carry the Move Originator AE Title
    # (PS3.7 9.1.1.1): label them with that poller, not this listener.
    poller = source_for_move(sources(), peer_ae=calling_ae,
                             move_originator_ae=str(req.MoveOriginatorApplicationEntityTitle or "").strip())
    meta = IngestMetadata(
        source_type="dimse_poller" if poller else "cstore",
        source_id=poller or listener.id,
        calling_ae=calling_ae,
        called_ae=requestor.primitive.called_ae_title.strip() if requestor.primitive else listener.ae_title,
        peer_ip=requestor.address,
        received_at=datetime.now(timezone.utc),
        sop_instance_uid=uid,
        sop_class_uid=str(req.AffectedSOPClassUID or ""),
    )
    try:
        ref = ingestor.ingest_file(path, meta, move=True)
    except Exception:
        log.exception("could not store %s from %s; answering 0xA700", meta.sop_instance_uid, meta.calling_ae)
        return STATUS_OUT_OF_RESOURCES
    finally:
        _restart_idle_timer(event.assoc)
    log.debug("stored %s from %s as %s", meta.sop_instance_uid, meta.calling_ae, ref)
    return STATUS_SUCCESS


def build_ae(listener: Listener, limits: ConnectionLimits = ConnectionLimits()) -> AE:
    """The listener's AE: Verification and every storage SOP class, and with ``spanner``
    Study Root C-FIND (PS3.4 C.4.1)."""
    ae = AE(ae_title=listener.ae_title)
    ae.maximum_pdu_size = listener.max_pdu
    ae.maximum_associations = limits.max_associations
    ae.acse_timeout = limits.acse_timeout_s
    ae.dimse_timeout = limits.dimse_timeout_s
    ae.network_timeout = limits.network_timeout_s
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    if listener.spanner:
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    return ae


def _needs_restart(running: Listener, wanted: Listener) -> bool:
    """True when ``wanted`` differs from ``running`` in more than its allow-lists, which a
    running server takes over in place (:class:`Admission`)."""
    return running.model_dump(exclude=_ALLOW_LISTS) != wanted.model_dump(exclude=_ALLOW_LISTS)


_ALLOW_LISTS = {"called_ae_titles", "calling_ae_titles", "allowed_sources"}


class Gateway:
    """The configured listeners. ``start`` opens them; ``apply`` follows a changed list
    of listeners while running: a new one opens, a removed one closes (associations in
    progress finish: only the listening socket closes), a changed one reopens, and a
    change of allow-lists only applies to the next association. A listener whose port
    cannot be bound is logged, kept as its error in ``status()`` and, with ``docs``, as
    the last error of its counters (:mod:`shared.counters`); the others run, and each
    ``apply`` tries it again. Listeners with ``tls`` speak DICOM over TLS (PS3.15 B.1),
    by default requiring a client certificate signed by the configured CA. Received
    data sets go to ``spool_dir`` (default: tempfile's directory, which the embedded
    runtime points at its data dir's ``tmp/``); below ``min_free_bytes`` free there,
    associations and C-STOREs are refused. With ``docs``, associations the allow-lists
    reject are counted as the listener's ``refused``."""

    def __init__(self, listeners: list[Listener], ingestor: Ingestor, *, secrets: Secrets,
                 sources: Callable[[], list] = lambda: [], spanners: Callable[[], list] = lambda: [],
                 min_free_bytes: int = 0,
                 spool_dir: Path | str | None = None, limits: ConnectionLimits = ConnectionLimits(),
                 docs: DocumentStore | None = None):
        # process-wide, before the first association: received data sets stream to spool
        # files, and the receive guards (PDU length, temporary files, a full disk)
        _config.STORE_RECV_CHUNKED_DATASET = True
        receive.install()
        self.listeners = list(listeners)  # as configured; those running: ``ports``
        self.ingestor = ingestor
        self.secrets = secrets
        self.sources = sources
        self.spanners = spanners  # the listeners with ``spanner`` answer C-FIND from these
        self.limits = limits
        self.docs = docs
        self.free_space = FreeSpace(spool_dir or tempfile.gettempdir(), min_free_bytes)
        self._lock = threading.Lock()  # one apply at a time
        self._servers: dict[str, tuple[Listener, GatewayServer]] = {}
        self._errors: dict[str, str] = {}

    def start(self, *, strict: bool = True) -> None:
        """Open every listener. ``strict``: one that cannot be opened closes the others
        and its error is raised (a config that cannot listen at start is the operator's
        to fix); else it is only reported, as by ``apply``."""
        failures = self.apply(self.listeners, report=not strict)  # strict: the caller says it, once
        if strict and failures:
            self.stop()
            raise next(iter(failures.values()))

    def apply(self, listeners: list[Listener], *, report: bool = True) -> dict[str, Exception]:
        """Make the running listeners those of ``listeners`` (see the class docstring);
        returns the errors of those that could not be opened, by id (with ``report``,
        also logged and counted)."""
        failures: dict[str, Exception] = {}
        with self._lock:
            self.listeners = list(listeners)
            wanted = {lsn.id: lsn for lsn in listeners}
            for lid, (running, server) in list(self._servers.items()):
                if lid not in wanted or _needs_restart(running, wanted[lid]):
                    self._close(lid, server, "removed" if lid not in wanted else "changed")
                elif running != wanted[lid]:
                    server.admission = Admission(wanted[lid])
                    self._servers[lid] = (wanted[lid], server)
                    log.info("listener %s: allow-lists changed", lid)
            for lid in set(self._errors) - set(wanted):
                del self._errors[lid]
            for lid, listener in wanted.items():
                if lid not in self._servers:
                    try:
                        self._open(listener, report)
                    except Exception as exc:  # noqa: BLE001 - an unusable listener must not stop the others
                        failures[lid] = exc
        return failures

    def _open(self, listener: Listener, report: bool) -> None:
        try:
            server = self._serve(listener)
        except Exception as exc:
            error = f"cannot listen on {listener.host}:{listener.port}: {describe_error(exc)}"
            if report and self._errors.get(listener.id) != error:  # once, not on every apply that retries it
                log.error("listener %s: %s", listener.id, error)
                self._count(listener.id, error=error)
            self._errors[listener.id] = error
            raise
        self._errors.pop(listener.id, None)
        self._servers[listener.id] = (listener, server)
        log.info("listener %s: AE %s on %s:%d%s", listener.id, listener.ae_title, listener.host,
                 server.server_address[1], " (TLS)" if server.ssl_context else "")

    def _serve(self, listener: Listener) -> GatewayServer:
        ae = build_ae(listener, self.limits)
        handlers = [
            (evt.EVT_C_STORE, handle_store, [listener, self.ingestor, self.sources, self.free_space]),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
        ]
        if listener.spanner:
            from shared.spanner.cfind_front import handle_find

            handlers.append((evt.EVT_C_FIND, handle_find, [listener.spanner, self.spanners, self.sources,
                                                           self.secrets, self.docs]))
        tls = server_context(listener.tls, self.secrets) if listener.tls else None
        # AE.start_server(block=False), with this module's server class
        server = ae.make_server((listener.host, listener.port), evt_handlers=handlers, ssl_context=tls,
                                server_class=GatewayServer, limits=self.limits, free_space=self.free_space,
                                admission=Admission(listener),
                                on_refused=lambda why: self._count(listener.id, error=why, refused=1))
        ae._servers.append(server)  # as start_server does: server.shutdown() removes it
        threading.Thread(target=server.serve_forever, name=f"listener-{listener.id}", daemon=True).start()
        return server

    def _close(self, listener_id: str, server: GatewayServer, why: str) -> None:
        """Stop accepting; the associations already running go on to their end."""
        server.shutdown()
        del self._servers[listener_id]
        log.info("listener %s: %s, closed port %d", listener_id, why, server.server_address[1])

    def _count(self, listener_id: str, *, error: str, **counts: int) -> None:
        if self.docs is not None:
            counters.count_in(self.docs, counters.listener(listener_id), error=error, **counts)

    @property
    def ports(self) -> dict[str, int | None]:
        """The port each configured listener listens on; None while it cannot."""
        running = {lid: server.server_address[1] for lid, (_, server) in list(self._servers.items())}
        return {lsn.id: running.get(lsn.id) for lsn in self.listeners}

    def status(self) -> dict:
        """For ``/status``: free space against the floor, open connections, and the
        listeners that cannot listen, with why."""
        servers = [server for _, server in list(self._servers.values())]  # apply may change them meanwhile
        return {**self.free_space.status(), "connections": sum(s.connection_count for s in servers),
                "listener_errors": dict(self._errors)}

    def stop(self) -> None:
        with self._lock:
            for lid, (_, server) in list(self._servers.items()):
                server.shutdown()
                del self._servers[lid]
