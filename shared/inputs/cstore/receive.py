"""Guards on how pynetdicom 3 receives, for the gateway's associations.

As shipped, pynetdicom (3.0):

1. reads each PDU whole into memory, whatever length its header announces: a P-DATA-TF
   PDU far over the maximum length the gateway offered (PS3.8 D.1) was buffered in full;
2. writes a C-STORE data set to a ``NamedTemporaryFile(delete=False)`` from the DUL
   thread and forgets the file when the association ends before the data set is
   complete (an A-ABORT, a reset, a malformed message);
3. lets an ``OSError`` from that write (a full disk) escape the DUL thread, which then
   aborts the association: the C-STORE is never answered;
4. waits for ever (until the network timeout aborts the association) for the data set of
   a C-STORE whose command announced one that never comes, as pynetdicom's own requestor
   sends for an empty data set.

:func:`install` changes each, and only where pynetdicom still has the internals this
relies on; otherwise it logs one warning and leaves pynetdicom as shipped:

1. An acceptor's DUL reads a PDU's header first and refuses a PDU longer than allowed
   (:func:`pdu_limit`) as an invalid PDU: the state machine answers it with an A-ABORT
   (PS3.8 9.2, AA-8) before a byte of its body is read; what the peer still sends on
   that connection is dropped unread until the connection closes.
2. Data sets are written to a :class:`SpoolFile`, which each association keeps a list
   of: :func:`discard_spool_files` removes those still there when the association ends.
3. A :class:`SpoolFile` that cannot be written keeps the error (``write_error``), removes
   what it wrote, and swallows the rest of the data set: the C-STORE completes and its
   handler answers it (0xA700, Out of Resources), and the association lives on.
4. A C-STORE whose data set has not started :data:`DATA_SET_WAIT_S` after its command
   is handed to its handler as it is (``SpoolFile.stalled``, no data set bytes), which
   answers it; data set fragments the peer sends after that abort the association.

What of pynetdicom this relies on is listed by :func:`_missing_internals`; upstream
reports: docs/upstream/ (unbounded-pdu-read.md, spool-files-left-behind.md, full-disk-aborts.md,
data-set-never-sent.md).
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pynetdicom
import pynetdicom.dimse_messages
import pynetdicom.dimse_primitives
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

log = logging.getLogger(__name__)

SPOOL_PREFIX = "recv-"  # received data sets: the start-up sweep removes only these
# A-ASSOCIATE-RQ and the other non-data PDUs: one proposing every storage SOP class in a
# dozen transfer syntaxes is about 100 KiB.
MAX_CONTROL_PDU = 1 << 20
# P-DATA-TF when the listener offers no maximum (max_pdu 0): still not all of memory.
MAX_UNLIMITED_PDATA = 64 << 20
PDATA_TF = 0x04
# Senders send a data set right behind its command; one that has not started after this
# long is not coming.
DATA_SET_WAIT_S = 5.0
DEFAULT_PDU_TIMEOUT_S = 60.0  # pynetdicom's network timeout, for an association without one
_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
              0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
_DISCARD_CHUNK = 64 * 1024
_SPOOLS_ATTR = "_axiom_spool_files"
_DISCARD_ATTR = "_axiom_discard_input"


def pdu_limit(dul: DULServiceProvider, pdu_type: int) -> int:
    """The longest PDU (its variable field, PS3.8 9.3.1) this acceptor reads: the
    maximum length it offered for P-DATA-TF (PS3.8 D.1), :data:`MAX_CONTROL_PDU` for
    the others."""
    if pdu_type != PDATA_TF:
        return MAX_CONTROL_PDU
    return dul.assoc.acceptor.maximum_length or MAX_UNLIMITED_PDATA


class SpoolFile:
    """The file pynetdicom writes one received C-STORE data set into (in place of its
    ``NamedTemporaryFile``), in the temporary directory (the data dir's ``tmp/``).

    A write that fails (ENOSPC, EDQUOT, EIO...) is kept in ``write_error``; the file is
    removed at once, giving its space back, and later writes are dropped so the data
    set is still read to its end and the request can be answered."""

    def __init__(self, *, mode: str = "wb", suffix: str = ".dcm", delete: bool = False):
        self.write_error: OSError | None = None
        self.closed = False
        self.created_at = time.monotonic()
        self.fragments = 0  # data set fragments written (pynetdicom flushes after each)
        self.stalled = False  # handed over without its data set (DATA_SET_WAIT_S)
        self._owner: set | None = None
        try:
            self._file = tempfile.NamedTemporaryFile(delete=delete, mode=mode, suffix=suffix, prefix=SPOOL_PREFIX)
            self.name = self._file.name
        except OSError as exc:
            self._file = None
            # a name nothing has: pynetdicom's unlink of it after the handler fails harmlessly
            self.name = os.path.join(tempfile.gettempdir(), f"{SPOOL_PREFIX}unwritten-{uuid.uuid4().hex}.dcm")
            self.write_error = exc
        self._track()

    def _track(self) -> None:
        """Joins the list of the association whose DUL thread receives it."""
        thread = threading.current_thread()
        if isinstance(thread, DULServiceProvider):
            owner = thread.assoc.__dict__.setdefault(_SPOOLS_ATTR, set())
            owner.add(self)
            self._owner = owner

    @property
    def file(self) -> "SpoolFile":
        return self  # pynetdicom calls ``.file.flush()`` after each fragment

    def write(self, data) -> int:
        if self._file is not None:
            try:
                return self._file.write(data)
            except OSError as exc:
                self._failed(exc)
        return len(data)

    def flush(self) -> None:
        self.fragments += 1
        self.sync()

    def sync(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.write_error = exc
        file, self._file = self._file, None
        try:
            file.close()  # flushing again fails as well; the descriptor is closed regardless
        except OSError:
            pass
        _unlink(self.name)

    def close(self) -> None:
        self.closed = True
        if self._owner is not None:
            self._owner.discard(self)
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                self.write_error = self.write_error or exc

    def discard(self) -> None:
        """Close and remove: the data set was never answered Success."""
        self.close()
        _unlink(self.name)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the temporary file %s: %s", path, exc.strerror or exc)


def sweep_spool(directory: str | os.PathLike) -> int:
    """Remove the data sets a previous run was receiving into ``directory`` (they were
    never answered Success: their senders still have them); returns how many."""
    removed = 0
    for path in Path(directory).glob(f"{SPOOL_PREFIX}*"):
        if path.is_file():
            _unlink(str(path))
            removed += 1
    return removed


def discard_spool_files(assoc) -> int:
    """Remove the data sets ``assoc`` received and no handler took (the association
    ended half-way through one, or before serving it); returns how many there were."""
    spools = list(assoc.__dict__.get(_SPOOLS_ATTR, ()))
    for spool in spools:
        spool.discard()
    return len(spools)


def _read_pdu_bounded(dul: DULServiceProvider, read_as_shipped) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` with the PDU length checked
    before the body is read, and the whole PDU due within the network timeout (a peer
    sending one byte now and then does not hold a thread for ever). Same events: Evt17
    when the connection closed or timed out, Evt19 for an unknown, invalid or oversized
    PDU (see the module docstring)."""
    if not dul.assoc.is_acceptor:
        return read_as_shipped(dul)
    transport = dul.socket
    if dul.__dict__.get(_DISCARD_ATTR):
        _drop_input(transport)
        return
    timeout = dul.assoc.network_timeout or DEFAULT_PDU_TIMEOUT_S
    header = _recv_exactly(transport, 6, timeout)
    if header is None:
        dul.event_queue.put("Evt17")
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in _PDU_NAMES:
        log.warning("%s sent an unknown PDU type 0x%02X: aborting the association", _peer(dul), pdu_type)
        dul.__dict__[_DISCARD_ATTR] = True  # the rest of it is noise, not PDUs
        dul.event_queue.put("Evt19")
        return
    limit = pdu_limit(dul, pdu_type)
    if length > limit:
        log.warning("%s announced a %s PDU of %d bytes, over the %d bytes allowed (PS3.8 D.1): aborting the"
                    " association without reading it", _peer(dul), _PDU_NAMES[pdu_type], length, limit)
        dul.__dict__[_DISCARD_ATTR] = True
        dul.event_queue.put("Evt19")
        return
    whole = _recv_exactly(transport, length, timeout, prefix=header)
    if whole is None:
        dul.event_queue.put("Evt17")
        return
    try:
        pdu, event = dul._decode_pdu(whole)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is an invalid PDU (Evt19), as in pynetdicom
        log.warning("%s sent a %s PDU that cannot be decoded (%s): aborting the association", _peer(dul),
                    _PDU_NAMES[pdu_type], type(exc).__name__)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _recv_exactly(transport, length: int, timeout: float, prefix: bytes = b"") -> bytearray | None:
    """``prefix`` then ``length`` bytes from the connection; None when it closed, a read
    timed out (the socket's timeout: the gateway's sockets have the network timeout) or
    the bytes kept coming, but too slowly to arrive within ``timeout``."""
    sock = transport.socket
    if sock is None:
        return None
    buffer = bytearray(len(prefix) + length)
    buffer[:len(prefix)] = prefix
    view = memoryview(buffer)
    received, end = len(prefix), len(buffer)
    deadline = time.monotonic() + timeout
    try:
        while received < end:
            count = sock.recv_into(view[received:], end - received)
            if not count:
                return None
            received += count
            if received < end and time.monotonic() > deadline:
                return None
    except (OSError, ValueError):  # TimeoutError is an OSError; ValueError: closed meanwhile
        return None
    return buffer


def _hand_over_stalled_store(dul: DULServiceProvider) -> None:
    """In the DUL thread (so no PDU is being decoded meanwhile): a C-STORE whose command
    arrived :data:`DATA_SET_WAIT_S` ago with no data set since goes to its handler as it
    is, as pynetdicom does with a complete message (``DIMSEServiceProvider.receive_primitive``)."""
    dimse = dul.assoc.dimse
    message = dimse.message
    if message is None:
        return
    spool = message.__dict__.get("_data_set_file")
    if (not isinstance(spool, SpoolFile) or spool.fragments
            or time.monotonic() - spool.created_at < DATA_SET_WAIT_S):
        return
    log.warning("%s announced a data set for a C-STORE and sent none in %.0f s: answering it", _peer(dul),
                DATA_SET_WAIT_S)
    spool.sync()
    spool.stalled = True
    context_id = message.context_id
    primitive = message.message_to_primitive()
    dimse.message = None
    dimse.msg_queue.put((context_id, primitive))


def _drop_input(transport) -> None:
    """After an abort for a PDU we would not read: read and drop what is in flight, so
    the peer gets our A-ABORT rather than a reset; at its end, close."""
    sock = transport.socket
    try:
        data = sock.recv(_DISCARD_CHUNK) if sock is not None else b""
    except (OSError, TimeoutError):
        data = b""
    if not data:
        transport.close()  # Evt17


def _peer(dul: DULServiceProvider) -> str:
    try:
        return f"{dul.assoc.requestor.address}:{dul.assoc.requestor.port}"
    except Exception:  # noqa: BLE001 - only for a log line
        return "a peer"


_installed = False
_install_lock = threading.Lock()


def _missing_internals() -> list[str]:
    """What the guards use of pynetdicom's internals and this version lacks."""
    if not pynetdicom.__version__.startswith("3."):
        return [f"pynetdicom 3 (this is {pynetdicom.__version__})"]
    missing = [f"DULServiceProvider.{name}" for name in ("_read_pdu_data", "_decode_pdu", "_is_transport_event", "assoc")
               if not hasattr(DULServiceProvider, name)]
    missing += [f"DIMSEMessage.{name}" for name in ("message_to_primitive",)
                if not hasattr(pynetdicom.dimse_messages.DIMSEMessage, name)]
    if getattr(pynetdicom.dimse_messages, "NamedTemporaryFile", None) is not tempfile.NamedTemporaryFile:
        missing.append("dimse_messages.NamedTemporaryFile")
    # the instance attributes: on an acceptor that never runs
    probe = Association(AE(), "acceptor")
    try:
        missing += [f"DULServiceProvider().{name}" for name in ("socket", "event_queue", "_recv_pdu")
                    if not hasattr(probe.dul, name)]
        if not hasattr(probe.acceptor, "maximum_length"):
            missing.append("Association().acceptor.maximum_length")
        missing += [f"DIMSEServiceProvider().{name}" for name in ("message", "msg_queue")
                    if not hasattr(probe.dimse, name)]
        missing += [f"DIMSEMessage().{name}" for name in ("context_id", "_data_set_file")
                    if not hasattr(pynetdicom.dimse_messages.DIMSEMessage(), name)]
        # where the gateway's handler finds the SpoolFile (write_error, stalled)
        if not hasattr(pynetdicom.dimse_primitives.C_STORE(), "_dataset_file"):
            missing.append("C_STORE()._dataset_file")
    finally:
        for end in probe.dul.__dict__.pop("_wake_pair", None) or ():  # shared.dicom.reactor's, if installed
            end.close()
    return missing


def install() -> bool:
    """Install the guards (idempotent); False, with one warning, when this pynetdicom
    does not have what they rely on."""
    global _installed
    with _install_lock:
        if _installed:
            return True
        missing = _missing_internals()
        if missing:
            log.warning("pynetdicom %s lacks %s: the gateway runs without its receive guards (oversized PDUs,"
                        " temporary files of aborted transfers, full disk)", pynetdicom.__version__, ", ".join(missing))
            return False
        read_as_shipped = DULServiceProvider._read_pdu_data
        is_transport_event = DULServiceProvider._is_transport_event

        def _read_pdu_data(self) -> None:
            _read_pdu_bounded(self, read_as_shipped)

        def _is_transport_event(self) -> bool:  # each pass of the DUL loop
            if self.assoc.is_acceptor and self.assoc.dimse.message is not None:
                _hand_over_stalled_store(self)
            return is_transport_event(self)

        DULServiceProvider._read_pdu_data = _read_pdu_data
        DULServiceProvider._is_transport_event = _is_transport_event
        pynetdicom.dimse_messages.NamedTemporaryFile = SpoolFile
        _installed = True
        return True
