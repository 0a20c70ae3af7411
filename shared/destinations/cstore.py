"""C-STORE SCU destination (PS3.4 Annex B, PS3.7 section 9.1.1), optionally over TLS
(PS3.15 Annex B.1).

The file is sent as stored: pynetdicom's chunked send streams the encoded dataset
without decoding it, and only the instance's own transfer syntax is proposed, so
nothing is transcoded on the way. Memory stays bounded whatever the instance's size:
P-DATA PDUs are at most :data:`MAX_SEND_PDU` long and at most :data:`SEND_QUEUE_PDUS`
of them wait for the socket (:class:`_SendQueue`). Associations are pooled per (SOP class, transfer
syntax) and reused for following instances, up to the destination's
``max_concurrency`` at once; one that fails is aborted, never reused."""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import pynetdicom
from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE, _config, build_context
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.status import code_to_category

from shared.config import CStoreDestination
from shared.dicom import reactor
from shared.dicom.tls import client_context
from shared.errors import DeliveryRefused, RetryLater
from shared.logs import describe_error
from shared.messages import Delivery
from shared.ports import Secrets

log = logging.getLogger(__name__)

# Warning statuses (PS3.4 B.2.3) still mean the instance was stored.
_STORED = {"Success", "Warning"}
IDLE_S = 5.0  # an association unused this long is released
# A P-DATA PDU is read from the file whole: PDUs are cut at this length at most, even
# when the peer takes longer ones or any length (maximum length 0, PS3.8 D.1), and
# no more than SEND_QUEUE_PDUS of them wait for the socket.
MAX_SEND_PDU = 1024 * 1024
SEND_QUEUE_PDUS = 4
_chunked_send_checked = False


def _send_files_as_stored() -> None:
    """pynetdicom's chunked send (``_config.STORE_SEND_CHUNKED_DATASET``, documented in
    its config reference) streams the file's data set without decoding it. Without the
    flag (a pynetdicom that dropped it), a file is read and re-encoded: one warning."""
    global _chunked_send_checked
    if _chunked_send_checked:
        return
    _chunked_send_checked = True
    if not hasattr(_config, "STORE_SEND_CHUNKED_DATASET"):
        log.warning("pynetdicom %s has no _config.STORE_SEND_CHUNKED_DATASET: C-STORE destinations send each file"
                    " decoded and re-encoded by pydicom, not as stored", pynetdicom.__version__)
        return
    _config.STORE_SEND_CHUNKED_DATASET = True


class _SendStopped(RetryLater, ConnectionError):
    """The association ended while a P-DATA waited for room (the reason is ours: no values)."""


class _SendStalled(RetryLater, TimeoutError):
    """The peer took nothing while a P-DATA waited for room."""


class _SendQueue(queue.Queue):
    """The DUL's queue of primitives to send, bounded for P-DATA. pynetdicom puts every
    P-DATA PDU of a message on its (unbounded) queue as fast as it reads the file, so
    a file read in chunks would still pile up in memory while the socket drains. Here
    a P-DATA put waits while ``maxsize`` PDUs are queued; it fails once the DUL thread
    has stopped or has taken nothing for ``stall_s``, rather than wait forever. Other
    primitives (release, abort) never wait."""

    def __init__(self, dul, maxsize: int, stall_s: float):
        super().__init__(maxsize)
        self._dul, self._stall_s = dul, stall_s

    def put(self, item, block=True, timeout=None) -> None:
        with self.not_full:
            if isinstance(item, P_DATA):
                deadline = time.monotonic() + self._stall_s
                while self._qsize() >= self.maxsize:
                    if self._dul._kill_thread or not self._dul.is_alive():
                        raise _SendStopped("the association ended while the instance was being sent")
                    if time.monotonic() > deadline:
                        raise _SendStalled(f"the peer took no data for {self._stall_s:.0f} s")
                    self.not_full.wait(0.1)
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()


_unbounded_warned = False


def _missing_send_internals(assoc) -> list[str]:
    """What :func:`_bound_sending` relies on of pynetdicom's internals and this
    association lacks (pinned: pynetdicom 3.0.x; see docs/upstream/README.md)."""
    dul = getattr(assoc, "dul", None)
    missing = [] if isinstance(getattr(dul, "to_provider_queue", None), queue.Queue) else [
        "DULServiceProvider().to_provider_queue"]
    missing += [] if isinstance(getattr(dul, "_kill_thread", None), bool) else ["DULServiceProvider()._kill_thread"]
    missing += [] if hasattr(getattr(assoc, "acceptor", None), "maximum_length") else ["Association.acceptor.maximum_length"]
    return missing


def _bound_sending(assoc, stall_s: float) -> None:
    """Bound what an established association holds in memory while sending: PDUs of
    at most MAX_SEND_PDU (a sender may send PDUs shorter than the peer's maximum,
    PS3.8 9.3.1), at most SEND_QUEUE_PDUS of them queued. Without the internals this
    needs, it logs one warning and sends as pynetdicom does (memory then grows with
    the instance)."""
    global _unbounded_warned
    missing = _missing_send_internals(assoc)
    if missing:
        if not _unbounded_warned:
            _unbounded_warned = True
            log.warning("pynetdicom %s lacks %s: C-STORE sends queue whole instances in memory",
                        pynetdicom.__version__, ", ".join(missing))
        return
    peer = assoc.acceptor
    if not peer.maximum_length or peer.maximum_length > MAX_SEND_PDU:
        peer.maximum_length = MAX_SEND_PDU
    dul = assoc.dul
    pending, dul.to_provider_queue = dul.to_provider_queue, _SendQueue(dul, SEND_QUEUE_PDUS, stall_s)
    while not pending.empty():  # nothing is queued once established; keep the order if something is
        dul.to_provider_queue.put(pending.get_nowait())


class CStoreSender:
    def __init__(self, dest: CStoreDestination, secrets: Secrets):
        _send_files_as_stored()
        self.dest = dest
        self.ae = AE(ae_title=dest.calling_ae)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = dest.timeout_s
        self.ae.maximum_pdu_size = dest.max_pdu
        self._tls = (client_context(dest.tls, secrets), dest.host) if dest.tls else None
        self._idle: dict[tuple[str, str], list[tuple[float, object]]] = {}
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def peer(self) -> str:
        return f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"

    def reap(self, max_idle_s: float = IDLE_S) -> None:
        """Release associations idle longer than ``max_idle_s``: an open association
        holds resources at the peer, and some peers take only one at a time."""
        now = time.monotonic()
        stale = []
        with self._lock:
            for key, pool in self._idle.items():
                stale += [a for used, a in pool if now - used >= max_idle_s or not a.is_established]
                pool[:] = [(used, a) for used, a in pool if now - used < max_idle_s and a.is_established]
        for assoc in stale:
            assoc.release()

    def _checkout(self, key: tuple[str, str]):
        now = time.monotonic()
        evict = []
        with self._lock:
            pool = self._idle.get(key, [])
            while pool:
                last_used, assoc = pool.pop()
                if now - last_used < IDLE_S and assoc.is_established:
                    self._busy += 1
                    return assoc
                evict.append(assoc)
            # Never hold more associations than max_concurrency: free idle ones of other
            # SOP classes / transfer syntaxes first.
            idle = sorted(((used, k, a) for k, p in self._idle.items() for used, a in p), key=lambda t: t[0])
            while idle and self._busy + len(idle) >= self.dest.max_concurrency:
                _, k, a = idle.pop(0)
                self._idle[k] = [(u, x) for u, x in self._idle[k] if x is not a]
                evict.append(a)
            self._busy += 1
        for assoc in evict:
            assoc.release()
        try:
            return self._associate(key)
        except BaseException:
            with self._lock:
                self._busy -= 1
            raise

    def _associate(self, key: tuple[str, str]):
        assoc = self.ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title,
                                  contexts=[build_context(key[0], [key[1]])],
                                  **({"tls_args": self._tls} if self._tls else {}))
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                # The peer accepted the association but none of its presentation
                # contexts; pynetdicom then aborts it. Retrying cannot help.
                raise DeliveryRefused(self._refusal(key, assoc.rejected_contexts))
            if assoc.is_rejected:
                raise RetryLater(f"association with {self.peer} rejected{_rejection(assoc)}")
            raise RetryLater(f"association with {self.peer} not established (peer down, wrong TLS, or timeout)")
        if not any(cx.abstract_syntax == key[0] for cx in assoc.accepted_contexts):
            rejected = assoc.rejected_contexts
            assoc.release()
            raise DeliveryRefused(self._refusal(key, rejected))
        reactor.keep_responses(assoc)  # a response the reactor takes first goes back to us
        _bound_sending(assoc, self.dest.timeout_s)
        return assoc

    def _refusal(self, key: tuple[str, str], rejected) -> str:
        why = {0x01: "user rejection", 0x02: "no reason given", 0x03: "abstract syntax not supported",
               0x04: "transfer syntax not supported"}
        results = sorted({why.get(cx.result, f"result 0x{cx.result:02X}") for cx in rejected if cx.result is not None})
        return (f"{self.peer} does not accept SOP class {_uid_name(key[0])} in transfer syntax {_uid_name(key[1])}"
                + (f" ({', '.join(results)})" if results else ""))

    def _checkin(self, key, assoc) -> None:
        with self._lock:
            self._busy -= 1
            if assoc is not None:
                self._idle.setdefault(key, []).append((time.monotonic(), assoc))

    def send(self, path: Path, delivery: Delivery) -> str:
        if delivery.sop_class_uid and delivery.transfer_syntax_uid:
            key = (delivery.sop_class_uid, delivery.transfer_syntax_uid)
        else:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
            key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        assoc = self._checkout(key)
        try:
            status = assoc.send_c_store(path)
        except Exception as exc:
            assoc.abort()
            self._checkin(key, None)
            raise RetryLater(f"C-STORE to {self.peer} failed: {describe_error(exc)}") from None
        if "Status" not in status:
            assoc.abort()
            self._checkin(key, None)
            raise RetryLater(f"no C-STORE response from {self.peer} (timeout or abort)")
        category = code_to_category(status.Status)
        # a peer that released after answering is not pooled
        self._checkin(key, assoc if assoc.is_established else None)
        if category not in _STORED:
            raise RetryLater(f"{self.peer} answered C-STORE status 0x{status.Status:04X} ({category})")
        return self.peer

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for pool in pools.values():
            for _, assoc in pool:
                assoc.release()


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _rejection(assoc) -> str:
    """Result, source and reason of an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    rsp = assoc.acceptor.primitive
    if rsp is None or rsp.result is None:
        return ""
    try:
        return f" ({rsp.result_str}, {rsp.source_str}: {rsp.reason_str})"
    except Exception:  # an out-of-range code: give the numbers
        return f" (result {rsp.result}, source {rsp.result_source}, reason {rsp.diagnostic})"
