"""A listener's socket server: how many connections it takes, from whom, for how long,
and when it refuses associations.

pynetdicom as shipped counts an accepted connection against ``maximum_associations``
from its first byte on and keeps it for as long as its timers allow (30 s before an
A-ASSOCIATE-RQ must arrive, 60 s of idleness): 32 connections that never associated
locked every modality out. Here (:class:`ConnectionLimits`):

- a connection must send its A-ASSOCIATE-RQ within ``acse_timeout_s`` (the ARTIM timer,
  PS3.8 9.1.5), or it is closed;
- an association with no PDU for ``network_timeout_s`` is aborted, and a socket read or
  write blocked that long fails (pynetdicom leaves accepted sockets blocking forever);
- one source address holds at most ``per_peer`` connections, so the others keep
  capacity; a connection over that is closed at once, before any thread starts for it;
- the TLS handshake runs in the connection's own thread with a time limit (pynetdicom
  runs it on the one thread that accepts connections, with none);
- while free space under the receive directory is below the floor (:class:`FreeSpace`)
  associations are rejected: A-ASSOCIATE-RJ rejected-transient, service-provider
  (presentation), local-limit-exceeded (PS3.8 9.3.4);
- an association outside the listener's allow-lists (:class:`Admission`) is rejected:
  A-ASSOCIATE-RJ rejected-permanent, service-user, with the reason that fits.

Associations are rejected from EVT_REQUESTED with the public ``assoc.acse.send_reject``
(pynetdicom's acceptor then skips its own negotiation: ``Association.run_reactor``). Not
with ``AE.require_called_aet``/``require_calling_aet``: they accept one called AE title
(``ae_title``), and reject with no hook to log or count the refusal.

When an association ends, the data sets it received and no handler took are removed
(:func:`shared.inputs.cstore.receive.discard_spool_files`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from shared.config import Listener
from shared.inputs.cstore import receive

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ Result, Source and Reason/Diag. (PS3.8 9.3.4, Table 9-21)
REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER, SOURCE_PROVIDER_PRESENTATION = 0x01, 0x03
NO_REASON_GIVEN, CALLING_AE_NOT_RECOGNIZED, CALLED_AE_NOT_RECOGNIZED = 0x01, 0x03, 0x07  # service-user reasons
LOCAL_LIMIT_EXCEEDED = 0x02  # a service-provider (presentation) reason
REFUSAL_LOG_EVERY_S = 60.0  # one log line per source address and minute while refusing it


@dataclass(frozen=True)
class ConnectionLimits:
    """Per listener. ``per_peer`` is half the listener's capacity: a modality or a PACS
    rarely needs more than a few associations at once, and several behind one NAT
    address still fit."""

    max_associations: int = 32
    per_peer: int = 16
    acse_timeout_s: float = 5.0
    dimse_timeout_s: float = 30.0
    network_timeout_s: float = 30.0  # Orthanc's DicomScpTimeout; pynetdicom's is 60
    tls_handshake_timeout_s: float = 10.0


class FreeSpace:
    """Free bytes on the filesystem that holds ``path`` (``statvfs``), looked up at most
    once per ``max_age_s``, so a check per C-STORE costs nothing."""

    def __init__(self, path: Path | str, floor: int, *, max_age_s: float = 1.0):
        self.path = str(path)
        self.floor = floor
        self.max_age_s = max_age_s
        self._free = 0
        self._checked_at = float("-inf")
        self._low = False

    def free_bytes(self) -> int:
        now = time.monotonic()
        if now - self._checked_at >= self.max_age_s:
            try:
                st = os.statvfs(self.path)
                self._free = st.f_bavail * st.f_frsize
            except OSError as exc:
                log.warning("cannot read the free space under %s: %s", self.path, exc.strerror or exc)
                self._free = 0
            self._checked_at = now
        return self._free

    def low(self) -> bool:
        """True while free space is under the floor; logs each change."""
        low = self.floor > 0 and self.free_bytes() < self.floor
        if low != self._low:
            self._low = low
            if low:
                log.error("free space under %s is %d bytes, below the floor of %d (settings.min_free_bytes): refusing"
                          " new associations and C-STOREs until space is freed", self.path, self._free, self.floor)
            else:
                log.warning("free space under %s is %d bytes again: accepting associations", self.path, self._free)
        return low

    def status(self) -> dict:
        return {"free_bytes": self.free_bytes(), "min_free_bytes": self.floor, "below_floor": self.low()}


@dataclass(frozen=True)
class Refusal:
    """Why an association is rejected, and the A-ASSOCIATE-RJ that says so."""

    reason: int  # Reason/Diag. of a rejected-permanent from the service user
    why: str  # for the log and /status: addresses and AE titles, never PHI


class Admission:
    """A listener's allow-lists (``allowed_sources``, ``called_ae_titles``,
    ``calling_ae_titles``), checked when an A-ASSOCIATE-RQ arrives. An unset list admits
    everything. AE titles are compared without their padding spaces (PS3.5 6.2, AE),
    case-sensitively; an IPv4 peer seen on an IPv6 socket (``::ffff:a.b.c.d``) also
    matches IPv4 networks."""

    def __init__(self, listener: Listener):
        self.listener_id = listener.id
        self.called = frozenset(listener.called_ae_titles) if listener.called_ae_titles is not None else None
        self.calling = frozenset(listener.calling_ae_titles) if listener.calling_ae_titles is not None else None
        self.networks = (tuple(ipaddress.ip_network(n, strict=False) for n in listener.allowed_sources)
                         if listener.allowed_sources is not None else None)

    def refusal(self, address: str, called_ae: str, calling_ae: str) -> Refusal | None:
        if self.networks is not None and not self._address_allowed(address):
            return Refusal(NO_REASON_GIVEN, f"source address {address} is not in allowed_sources")
        if self.called is not None and called_ae not in self.called:
            return Refusal(CALLED_AE_NOT_RECOGNIZED, f"called AE title {called_ae!r} is not in called_ae_titles")
        if self.calling is not None and calling_ae not in self.calling:
            return Refusal(CALLING_AE_NOT_RECOGNIZED, f"calling AE title {calling_ae!r} is not in calling_ae_titles")
        return None

    def _address_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
        except ValueError:
            return False
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)


class _SharedContexts(list):
    """The listener's supported presentation contexts, which pynetdicom deep-copies for
    every connection (``RequestHandler._create_association``): 171 contexts with their
    transfer syntaxes, 1.4 MB and 70-170 ms of CPU before the peer has sent a byte, so
    that each bare or garbage connection cost that and their memory stayed behind.
    Negotiation only reads them (``presentation.negotiate_as_acceptor`` answers with new
    contexts), so every association shares the same ones."""

    def __deepcopy__(self, memo) -> list:
        return list(self)


class GatewayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`ConnectionLimits`, the TLS handshake off
    the accept loop, the disk floor and the allow-lists (see the module docstring).
    ``admission`` may be replaced while the server runs (a config change): the next
    association is judged by the new one. ``on_refused(text)`` is called once per
    association rejected by it, with what the log line says (the gateway counts them)."""

    request_queue_size = 128  # the listen backlog: a burst of modalities waits for accept(), not for SYN retries

    def __init__(self, *args, limits: ConnectionLimits, free_space: FreeSpace | None = None,
                 admission: Admission | None = None, on_refused: Callable[[str], None] | None = None,
                 **kwargs):
        self.limits = limits
        self.free_space = free_space
        self.admission = admission
        self.on_refused = on_refused
        self._lock = threading.Lock()
        self._connections: Counter[str] = Counter()
        self._refusals: dict[str, tuple[float, int]] = {}
        self._handed_over = threading.local()
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)
        self.bind(evt.EVT_CONN_OPEN, self._watch_association)
        self.bind(evt.EVT_REQUESTED, self._admit)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return sum(self._connections.values())

    def get_request(self):
        return self.socket.accept()  # pynetdicom wraps TLS here, on the accept loop

    def verify_request(self, request, client_address) -> bool:
        """On the accept loop: take a slot for ``client_address``, or refuse it (the
        caller then closes the socket)."""
        peer = client_address[0]
        with self._lock:
            total = sum(self._connections.values())
            held = self._connections[peer]
            if held < self.limits.per_peer and total < self.limits.max_associations:
                self._connections[peer] = held + 1
                return True
        self._log_refusal(peer, held, total)
        return False

    def _log_refusal(self, peer: str, held: int, total: int) -> None:
        """The first refusal of ``peer`` at once, then at most a line a minute with a count."""
        now = time.monotonic()
        logged_at, unlogged = self._refusals.get(peer, (float("-inf"), 0))
        if now - logged_at < REFUSAL_LOG_EVERY_S:
            self._refusals[peer] = (logged_at, unlogged + 1)
            return
        self._refusals[peer] = (now, 0)
        if held >= self.limits.per_peer:
            why = f"it holds {held} connections, the most one address may (the others keep the rest)"
        else:
            why = f"the listener holds {total} connections, its maximum"
        since = f" ({unlogged} more since the last such line)" if unlogged else ""
        log.warning("refusing connections from %s: %s%s", peer, why, since)

    def _release(self, peer: str) -> None:
        with self._lock:
            self._connections[peer] -= 1
            if self._connections[peer] <= 0:
                del self._connections[peer]

    def process_request(self, request, client_address):
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._release(client_address[0])
            raise

    def process_request_thread(self, request, client_address):
        """The connection's own thread: TLS handshake, socket timeout, then pynetdicom
        (which starts the association's threads and returns)."""
        self._handed_over.assoc = None
        try:
            if self.ssl_context is not None:
                request = self._handshake(request, client_address)
                if request is None:
                    return
            request.settimeout(self.limits.network_timeout_s)
            super().process_request_thread(request, client_address)
        finally:
            if self._handed_over.assoc is None:  # no association took the slot over
                self._release(client_address[0])

    def _handshake(self, request, client_address):
        try:
            request.settimeout(self.limits.tls_handshake_timeout_s)
            return self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS handshake with %s:%s failed: %s", client_address[0], client_address[1], exc)
            self.shutdown_request(request)
            return None

    def _watch_association(self, event) -> None:
        """EVT_CONN_OPEN, in the connection's thread before the association's starts:
        when that thread ends, free the slot and remove what it left half-received."""
        assoc = event.assoc
        peer = event.address[0]
        self._handed_over.assoc = assoc
        run = assoc.run

        def run_then_clean_up() -> None:
            try:
                run()
            finally:
                try:
                    left = receive.discard_spool_files(assoc)
                    if left:
                        log.info("removed %d data set(s) %s:%s sent but never completed or was never answered for",
                                 left, peer, event.address[1])
                finally:
                    self._release(peer)

        assoc.run = run_then_clean_up

    def _admit(self, event) -> None:
        """EVT_REQUESTED: the A-ASSOCIATE-RQ has arrived; reject it here or let pynetdicom
        negotiate it. Rejected as pynetdicom rejects over ``maximum_associations``: the
        A-ASSOCIATE-RJ goes out before the connection closes."""
        assoc = event.assoc
        admission = self.admission  # one read: a config change may replace it meanwhile
        if admission is not None:
            rq = assoc.requestor.primitive
            address = assoc.requestor.address
            called, calling = rq.called_ae_title.strip(), rq.calling_ae_title.strip()
            refusal = admission.refusal(address, called, calling)
            if refusal is not None:
                what = (f"rejected an association from {address} (calling AE {calling!r}, called AE {called!r}):"
                        f" {refusal.why}")
                log.warning("listener %s: %s", admission.listener_id, what)
                if self.on_refused is not None:  # counted before the peer hears of it
                    self.on_refused(what)
                assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, refusal.reason)
                assoc.kill()
                return
        if self.free_space is not None and self.free_space.low():
            assoc.acse.send_reject(REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
            assoc.kill()
