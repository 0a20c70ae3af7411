"""pynetdicom's polling loops, woken by events instead of by the clock.

A pynetdicom 3 association runs two threads that poll. The DUL thread (the upper
layer, PS3.8 9) sleeps ``_run_loop_delay`` (1 ms) whenever a pass found nothing to do:
before it sends a queued PDU, such as our C-STORE response, and before it reads the
peer's next PDU. The acceptor's reactor (the DIMSE service user) sleeps a fixed 1 ms
between looks for a decoded request. An instance on one association waited out several
of those sleeps, and shortening them made every association spin while it was idle.

:func:`install` keeps both loops and their timeouts, but ends a sleep as soon as there
is something to do. The DUL thread waits in ``poll`` on its socket and on a wake-up
socket that ``send_pdu`` and ``kill_dul`` write to. The acceptor's reactor waits on its
DIMSE message queue. An idle association still wakes once per millisecond, as in
pynetdicom, and a busy one no longer waits for the clock.

This relies on pynetdicom 3.0 internals (:data:`INTERNALS`). :func:`install` checks that
each is there first; when one is not, it logs one warning naming it and leaves
pynetdicom as shipped: associations then poll, as pynetdicom's do. The runtimes call it
at start (shared/runtime/local.py, shared/runtime/gcp.py, scp_gateway/__main__.py);
importing this module changes nothing. Upstream report: docs/upstream/polling-loops.md.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time

import pynetdicom
import pynetdicom.association
import pynetdicom.dul
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import DIMSEPrimitive
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

REACTOR_SLEEP_S = 0.001  # pynetdicom.association's hard-coded reactor sleep

# What the wait uses of pynetdicom (and of queue.Queue), checked by install().
INTERNALS = (
    "DULServiceProvider.__init__, .send_pdu, .kill_dul, .run (wrapped)",
    "DULServiceProvider()._run_loop_delay, .to_provider_queue, .event_queue, .socket",
    "AssociationSocket()._is_connected, .socket",
    "Association.is_acceptor, Association().dimse.msg_queue (a queue.Queue)",
    "queue.Queue._qsize, queue.Queue().not_empty",
    "pynetdicom.dul.time and pynetdicom.association.time: the time module (replaced)",
)


def _wait_for_dul_work(dul: DULServiceProvider, timeout: float) -> None:
    """Return after ``timeout``, or sooner once the peer sent data, a PDU was queued
    for sending, or the thread was told to stop."""
    pair = dul.__dict__.get("_wake_pair")
    if pair is None:
        time.sleep(timeout)
        return
    if not dul.to_provider_queue.empty() or not dul.event_queue.empty():
        return
    reader = pair[0]
    waiting = [reader]
    transport = dul.socket
    sock = transport.socket if transport is not None and transport._is_connected else None
    if sock is not None:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # bytes TLS already decrypted
            return
        waiting.append(sock)
    try:
        woken = _readable(waiting, timeout)
    except (OSError, ValueError):  # the socket closed meanwhile: sleep as pynetdicom would
        time.sleep(timeout)
        return
    if reader in woken:
        try:
            reader.recv(4096)
        except OSError:
            pass


def _readable(sockets: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Those of ``sockets`` with data to read within ``timeout``; ``poll`` where it
    exists, as ``select`` refuses descriptors above 1023."""
    if not hasattr(select, "poll"):
        return select.select(sockets, [], [], timeout)[0]
    poller = select.poll()
    by_fd = {}
    for sock in sockets:
        fd = sock.fileno()
        poller.register(fd, select.POLLIN)  # ValueError once closed (fd -1)
        by_fd[fd] = sock
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def _wake(dul: DULServiceProvider) -> None:
    pair = dul.__dict__.get("_wake_pair")
    if pair is not None:
        try:
            pair[1].send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or closed (thread done)
            pass


def _wait_for_request(assoc: Association, timeout: float) -> None:
    """Return after ``timeout``, or sooner once a DIMSE message is decoded."""
    messages: queue.Queue = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages._qsize():
            messages.not_empty.wait(timeout)


class _Clock:
    """Stands in for the ``time`` module inside pynetdicom's ``dul`` and ``association``
    modules: the two loops' sleeps wait for work; every other call is ``time``'s."""

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, DULServiceProvider) and seconds == thread._run_loop_delay:
            _wait_for_dul_work(thread, seconds)
        elif isinstance(thread, Association) and thread.is_acceptor and seconds == REACTOR_SLEEP_S:
            _wait_for_request(thread, seconds)
        else:
            time.sleep(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


def missing_internals() -> list[str]:
    """Those of :data:`INTERNALS` this pynetdicom lacks (empty when all are there)."""
    missing = [f"DULServiceProvider.{name}" for name in ("__init__", "send_pdu", "kill_dul", "run")
               if not callable(getattr(DULServiceProvider, name, None))]
    missing += [f"{module.__name__}.time (the time module)" for module in (pynetdicom.dul, pynetdicom.association)
                if not (getattr(module, "time", None) is time or isinstance(getattr(module, "time", None), _Clock))]
    if not isinstance(vars(Association).get("is_acceptor"), property):
        missing.append("Association.is_acceptor")
    if not callable(getattr(queue.Queue, "_qsize", None)):
        missing.append("queue.Queue._qsize")
    if not isinstance(getattr(queue.Queue(), "not_empty", None), threading.Condition):
        missing.append("queue.Queue().not_empty")
    # the instance attributes: on an acceptor that never runs
    probe = Association(AE(), "acceptor")
    ends = socket.socketpair()
    try:
        dul = probe.dul
        missing += [f"DULServiceProvider().{name}" for name in ("_run_loop_delay", "socket")
                    if not hasattr(dul, name)]
        missing += [f"DULServiceProvider().{name}" for name in ("to_provider_queue", "event_queue")
                    if not isinstance(getattr(dul, name, None), queue.Queue)]
        if not isinstance(getattr(getattr(probe, "dimse", None), "msg_queue", None), queue.Queue):
            missing.append("Association().dimse.msg_queue")
        transport = AssociationSocket(probe, client_socket=ends[0])
        missing += [f"AssociationSocket().{name}" for name in ("_is_connected", "socket")
                    if not hasattr(transport, name)]
    finally:
        for end in ends:
            end.close()
        for end in probe.dul.__dict__.pop("_wake_pair", None) or ():  # a probe made after install()
            end.close()
    return missing


_installed: bool | None = None  # None: not tried yet; then whether the loops wait for work
_install_lock = threading.Lock()


def install() -> bool:
    """Make the associations of this process event-driven; the runtimes call it at start,
    before the first association. Idempotent. Returns False, having logged one warning,
    when this pynetdicom lacks what the wait relies on: pynetdicom is then left as shipped."""
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        missing = missing_internals()
        if missing:
            log.warning("pynetdicom %s lacks %s: associations poll as shipped (see docs/upstream/polling-loops.md)",
                        pynetdicom.__version__, ", ".join(missing))
            _installed = False
            return False
        init, send_pdu, kill_dul, run = (DULServiceProvider.__init__, DULServiceProvider.send_pdu,
                                         DULServiceProvider.kill_dul, DULServiceProvider.run)

        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            pair = socket.socketpair()
            for end in pair:
                end.setblocking(False)
            self._wake_pair = pair

        def send_pdu_and_wake(self, primitive) -> None:
            send_pdu(self, primitive)
            _wake(self)

        def kill_dul_and_wake(self) -> None:
            kill_dul(self)
            _wake(self)

        def run_then_close(self) -> None:
            try:
                run(self)
            finally:
                for end in self.__dict__.pop("_wake_pair", None) or ():
                    end.close()

        DULServiceProvider.__init__ = __init__
        DULServiceProvider.send_pdu = send_pdu_and_wake
        DULServiceProvider.kill_dul = kill_dul_and_wake
        DULServiceProvider.run = run_then_close
        pynetdicom.dul.time = pynetdicom.association.time = _Clock()
        _installed = True
        return True


_keeper_missing: list[str] | None = None  # what keep_responses needs and pynetdicom lacks; None: not checked


def _keeper_internals_missing(assoc: Association) -> list[str]:
    global _keeper_missing
    if _keeper_missing is None:
        missing = [] if callable(getattr(assoc, "_serve_request", None)) else ["Association._serve_request"]
        if not isinstance(getattr(getattr(assoc, "dimse", None), "msg_queue", None), queue.Queue):
            missing.append("Association.dimse.msg_queue")
        if not isinstance(getattr(DIMSEPrimitive, "is_valid_request", None), property):
            missing.append("DIMSEPrimitive.is_valid_request")
        if missing:
            log.warning("pynetdicom %s lacks %s: responses the reactor takes first are dropped, as shipped"
                        " (see docs/upstream/reactor-takes-response.md)", pynetdicom.__version__, ", ".join(missing))
        _keeper_missing = missing
    return _keeper_missing


def keep_responses(assoc: Association) -> None:
    """Work around a race in pynetdicom 3.0 on an association we requested: a
    ``send_c_*`` pauses the association's reactor thread, but the reactor can pass its
    checkpoint just before the pause and then take the response off the DIMSE queue and
    drop it as "unexpected". The sender waits out the DIMSE timeout and the association
    is aborted (a C-STORE the peer did store is sent again; a C-FIND or C-MOVE fails).
    On our outgoing associations every message that is not a request is a response to
    us, so the reactor puts it back for the sender instead of dropping it; requests (the
    C-STOREs of a C-GET) are served as before. Where pynetdicom lacks what this relies
    on, one warning and pynetdicom's own handling (docs/upstream/reactor-takes-response.md)."""
    if _keeper_internals_missing(assoc):
        return
    serve_request = assoc._serve_request

    def serve(msg, context_id):
        if isinstance(msg, DIMSEPrimitive) and not msg.is_valid_request:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve_request(msg, context_id)

    assoc._serve_request = serve


def no_delay(assoc: Association) -> bool:
    """Send small PDUs at once on an association we requested (``TCP_NODELAY``): a
    C-FIND's request and its pending responses are small, and with Nagle's algorithm
    against the peer's delayed ACK each exchange stalls about 40 ms
    (bench/results/spanner.md). pynetdicom sets no socket options; the socket is its
    ``assoc.dul.socket.socket``. False (and nothing changed) where that is missing."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # closed meanwhile: nothing to speed up
        return False
    return True
