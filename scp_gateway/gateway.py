"""pynetdicom listeners for C-ECHO (PS3.7 9.1.5) and C-STORE (PS3.4 Annex B).

Datasets are received in chunks straight to a temporary file
(``STORE_RECV_CHUNKED_DATASET``), so memory does not grow with instance size; the
handler stores that file through the Ingestor and answers Success (0x0000) only when
the store has returned, i.e. the object is durable. Any failure answers 0xA700 (Out
of Resources) so the sender keeps the instance and retries.
"""

from __future__ import annotations

import logging
import ssl
import threading
from datetime import datetime, timezone
from typing import Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from shared.config import Listener
from shared.destinations.tlsctx import server_context
from shared.dicom import reactor
from shared.ingest import Ingestor
from shared.messages import IngestMetadata
from shared.secrets import Secrets
from shared.sources.dimse import source_for_move

log = logging.getLogger(__name__)

_config.STORE_RECV_CHUNKED_DATASET = True
reactor.install()  # associations wait for work, not for the clock

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
TLS_HANDSHAKE_TIMEOUT_S = 10.0


class TLSAssociationServer(ThreadedAssociationServer):
    """pynetdicom's server with the TLS handshake moved off the accept loop.

    pynetdicom wraps each accepted socket in ``get_request``, i.e. on the one thread
    that accepts connections and with no time limit: a single client that connects and
    never starts its handshake (a port scanner, a load balancer's TCP probe, a stuck
    modality) keeps every other association out for as long as it stays connected.
    Here the handshake runs in the connection's own thread with a time limit, and a
    failed one is logged (pynetdicom drops it silently)."""

    def get_request(self):
        return self.socket.accept()

    def process_request_thread(self, request, client_address):
        try:
            request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
            tls_socket = self.ssl_context.wrap_socket(request, server_side=True)
            tls_socket.settimeout(None)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS handshake with %s:%s failed: %s", client_address[0], client_address[1], exc)
            self.shutdown_request(request)
            return
        super().process_request_thread(tls_socket, client_address)


def handle_store(event, listener: Listener, ingestor: Ingestor, sources: Callable[[], list]) -> int:
    req = event.request
    requestor = event.assoc.requestor
    # C-STORE sub-operations of a poller's C-MOVE carry the Move Originator AE Title
    # (PS3.7 9.1.1.1): label them with that poller, not this listener.
    poller = source_for_move(sources(), peer_ae=requestor.ae_title.strip(),
                             move_originator_ae=str(req.MoveOriginatorApplicationEntityTitle or "").strip())
    meta = IngestMetadata(
        source_type="dimse_poller" if poller else "cstore",
        source_id=poller or listener.id,
        calling_ae=requestor.ae_title.strip(),
        called_ae=requestor.primitive.called_ae_title.strip() if requestor.primitive else listener.ae_title,
        peer_ip=requestor.address,
        received_at=datetime.now(timezone.utc),
        sop_instance_uid=str(req.AffectedSOPInstanceUID or ""),
        sop_class_uid=str(req.AffectedSOPClassUID or ""),
    )
    try:
        ref = ingestor.ingest_file(event.dataset_path, meta, move=True)
    except Exception:
        log.exception("could not store %s from %s; answering 0xA700", meta.sop_instance_uid, meta.calling_ae)
        return STATUS_OUT_OF_RESOURCES
    log.debug("stored %s from %s as %s", meta.sop_instance_uid, meta.calling_ae, ref)
    return STATUS_SUCCESS


def build_ae(listener: Listener) -> AE:
    ae = AE(ae_title=listener.ae_title)
    ae.maximum_pdu_size = listener.max_pdu
    ae.maximum_associations = 32
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


class Gateway:
    """All configured listeners; ``start`` returns once every port is bound. Listeners
    with ``tls`` speak DICOM over TLS (PS3.15 B.1), by default requiring a client
    certificate signed by the configured CA."""

    def __init__(self, listeners: list[Listener], ingestor: Ingestor, *, secrets: Secrets | None = None,
                 sources: Callable[[], list] = lambda: []):
        self.listeners = listeners
        self.ingestor = ingestor
        self.secrets = secrets or Secrets()
        self.sources = sources
        self._servers = []

    def start(self) -> None:
        for listener in self.listeners:
            ae = build_ae(listener)
            handlers = [
                (evt.EVT_C_STORE, handle_store, [listener, self.ingestor, self.sources]),
                (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            ]
            tls = server_context(listener.tls, self.secrets) if listener.tls else None
            if tls is None:
                server = ae.start_server((listener.host, listener.port), block=False, evt_handlers=handlers)
            else:  # AE.start_server(block=False), with the handshake off the accept loop
                server = ae.make_server((listener.host, listener.port), evt_handlers=handlers, ssl_context=tls,
                                        server_class=TLSAssociationServer)
                ae._servers.append(server)  # as start_server does: server.shutdown() removes it
                threading.Thread(target=server.serve_forever, name=f"listener-{listener.id}", daemon=True).start()
            self._servers.append(server)
            log.info("listener %s: AE %s on %s:%d%s", listener.id, listener.ae_title, listener.host,
                     server.server_address[1], " (TLS)" if tls else "")

    @property
    def ports(self) -> list[int]:
        return [s.server_address[1] for s in self._servers]

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._servers.clear()
