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
from pynetdicom.sop_class import Verification

from shared.config import Listener
from shared.dicom.io import part10_layout
from shared.dicom.tls import server_context
from shared.inputs.attribution import source_for_move
from shared.inputs.cstore import receive
from shared.inputs.cstore.server import ConnectionLimits, FreeSpace, GatewayServer
from shared.inputs.ingest import Ingestor
from shared.messages import IngestMetadata
from shared.ports import Secrets

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
    ae = AE(ae_title=listener.ae_title)
    ae.maximum_pdu_size = listener.max_pdu
    ae.maximum_associations = limits.max_associations
    ae.acse_timeout = limits.acse_timeout_s
    ae.dimse_timeout = limits.dimse_timeout_s
    ae.network_timeout = limits.network_timeout_s
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


class Gateway:
    """All configured listeners; ``start`` returns once every port is bound. Listeners
    with ``tls`` speak DICOM over TLS (PS3.15 B.1), by default requiring a client
    certificate signed by the configured CA. Received data sets go to ``spool_dir``
    (default: tempfile's directory, which the embedded runtime points at its data dir's
    ``tmp/``); below ``min_free_bytes`` free there, associations and C-STOREs are refused."""

    def __init__(self, listeners: list[Listener], ingestor: Ingestor, *, secrets: Secrets,
                 sources: Callable[[], list] = lambda: [], min_free_bytes: int = 0,
                 spool_dir: Path | str | None = None, limits: ConnectionLimits = ConnectionLimits()):
        # process-wide, before the first association: received data sets stream to spool
        # files, and the receive guards (PDU length, temporary files, a full disk)
        _config.STORE_RECV_CHUNKED_DATASET = True
        receive.install()
        self.listeners = listeners
        self.ingestor = ingestor
        self.secrets = secrets
        self.sources = sources
        self.limits = limits
        self.free_space = FreeSpace(spool_dir or tempfile.gettempdir(), min_free_bytes)
        self._servers: list[GatewayServer] = []

    def start(self) -> None:
        for listener in self.listeners:
            ae = build_ae(listener, self.limits)
            handlers = [
                (evt.EVT_C_STORE, handle_store, [listener, self.ingestor, self.sources, self.free_space]),
                (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            ]
            tls = server_context(listener.tls, self.secrets) if listener.tls else None
            # AE.start_server(block=False), with this module's server class
            server = ae.make_server((listener.host, listener.port), evt_handlers=handlers, ssl_context=tls,
                                    server_class=GatewayServer, limits=self.limits, free_space=self.free_space)
            ae._servers.append(server)  # as start_server does: server.shutdown() removes it
            threading.Thread(target=server.serve_forever, name=f"listener-{listener.id}", daemon=True).start()
            self._servers.append(server)
            log.info("listener %s: AE %s on %s:%d%s", listener.id, listener.ae_title, listener.host,
                     server.server_address[1], " (TLS)" if tls else "")

    @property
    def ports(self) -> list[int]:
        return [s.server_address[1] for s in self._servers]

    def status(self) -> dict:
        """For ``/status``: free space against the floor, and open connections."""
        return {**self.free_space.status(), "connections": sum(s.connection_count for s in self._servers)}

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._servers.clear()
