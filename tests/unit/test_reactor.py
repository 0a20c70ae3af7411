"""pynetdicom associations wait for work, not for the clock (shared.dicom.reactor)."""

import json
import os
import queue
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pynetdicom.association
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification

from shared.dicom import reactor

SLOW_S = 5.0  # a loop delay no exchange below may wait out


def _slow_loops(assoc) -> None:
    assoc.dul._run_loop_delay = SLOW_S


def _pair(handlers):
    """A listening AE whose associations get SLOW_S loop delays, and an association to it
    with the same; returns (server, requestor association, acceptor associations)."""
    reactor.install()
    accepted = []

    def on_requested(event):
        accepted.append(event.assoc)
        _slow_loops(event.assoc)

    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    scp.add_supported_context(CTImageStorage)
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_REQUESTED, on_requested), *handlers])
    scu = AE(ae_title="SCU")
    scu.add_requested_context(Verification)
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
    assert assoc.is_established
    _slow_loops(assoc)
    return server, assoc, accepted


def _close(server, assoc, accepted) -> None:
    for a in [assoc, *accepted]:
        a.dul._run_loop_delay = 0.001
    assoc.release()
    server.shutdown()


def test_exchanges_do_not_wait_for_the_loop_delay():
    """With 5 s between polls, stock pynetdicom needs several polls per C-ECHO; here
    each queued PDU and each arriving one wakes the loop at once."""
    server, assoc, accepted = _pair([(evt.EVT_C_ECHO, lambda event: 0x0000)])
    try:
        started = time.monotonic()
        for _ in range(3):
            assert assoc.send_c_echo().Status == 0x0000
        assert time.monotonic() - started < SLOW_S
    finally:
        _close(server, assoc, accepted)


def test_a_c_store_reaches_the_acceptors_handler_and_its_answer_comes_back():
    received = []

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    server, assoc, accepted = _pair([(evt.EVT_C_STORE, on_store)])
    try:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        started = time.monotonic()
        assert assoc.send_c_store(ds).Status == 0x0000
        assert time.monotonic() - started < SLOW_S
        assert received == [ds.SOPInstanceUID]
    finally:
        _close(server, assoc, accepted)


def test_an_aborted_association_ends_its_threads_without_waiting_for_the_delay():
    server, assoc, accepted = _pair([(evt.EVT_C_ECHO, lambda event: 0x0000)])
    try:
        assoc.send_c_echo()
        started = time.monotonic()
        assoc.abort()
        assoc.dul.join(SLOW_S)
        assert not assoc.dul.is_alive() and time.monotonic() - started < SLOW_S
    finally:
        server.shutdown()


class _Transport:
    def __init__(self, sock):
        self.socket, self._is_connected = sock, True


class _Dul:
    """What the wait reads of pynetdicom's DULServiceProvider."""

    def __init__(self, sock):
        self.to_provider_queue, self.event_queue = queue.Queue(), queue.Queue()
        self.socket = _Transport(sock)
        self._wake_pair = socket.socketpair()


def test_a_socket_closed_under_the_wait_means_a_plain_sleep_not_a_spin(monkeypatch):
    slept = []
    monkeypatch.setattr(reactor.time, "sleep", slept.append)
    sock, _ = socket.socketpair()
    dul = _Dul(sock)
    sock.close()
    reactor._wait_for_dul_work(dul, 0.001)
    assert slept == [0.001]


def test_descriptors_above_1023_are_waited_on():
    """``select`` refuses them; a busy gateway holds that many files and sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip("cannot open descriptors above 1023 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    try:
        peer, local = socket.socketpair()
        high = socket.socket(fileno=os.dup2(local.fileno(), 1050))
        peer.send(b"x")
        assert reactor._readable([high], 1.0) == [high]
        high.close()
        local.close()
        peer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the fence: a pynetdicom without what the wait relies on is left as shipped ----------

_FALLBACK_SCRIPT = r"""
import json, logging, time
import pynetdicom.association, pynetdicom.dul
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification
from shared.dicom import reactor

class StandIn:  # pynetdicom.dul no longer holding the time module there
    def __getattr__(self, name):
        return getattr(time, name)

stand_in = pynetdicom.dul.time = StandIn()
shipped = {name: getattr(DULServiceProvider, name) for name in ("__init__", "send_pdu", "kill_dul", "run")}
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("shared.dicom.reactor").addHandler(handler)
results = [reactor.install(), reactor.install()]

scp = AE(ae_title="SCP")
scp.add_supported_context(Verification)
server = scp.start_server(("127.0.0.1", 0), block=False)
scu = AE(ae_title="SCU")
scu.add_requested_context(Verification)
assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
status = assoc.send_c_echo().Status
woken = "_wake_pair" in vars(assoc.dul)
assoc.release()
server.shutdown()
print(json.dumps({
    "results": results, "warnings": warnings, "status": status, "woken": woken,
    "methods_as_shipped": all(getattr(DULServiceProvider, n) is f for n, f in shipped.items()),
    "dul_time": pynetdicom.dul.time is stand_in, "association_time": pynetdicom.association.time is time,
}))
"""


def test_without_an_internal_install_warns_once_and_leaves_pynetdicom_as_shipped():
    """In a fresh interpreter (this one may have installed already): ``pynetdicom.dul``
    no longer holds the ``time`` module. install() says so once, patches nothing, and
    associations still work, polling as pynetdicom does."""
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], cwd=repo, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["results"] == [False, False]
    assert len(out["warnings"]) == 1 and "pynetdicom.dul.time" in out["warnings"][0]
    assert out["methods_as_shipped"] and out["dul_time"] and out["association_time"]
    assert out["status"] == 0x0000 and not out["woken"]


def test_missing_internals_names_each_one_gone(monkeypatch):
    assert reactor.missing_internals() == []
    monkeypatch.delattr(DULServiceProvider, "kill_dul")
    monkeypatch.setattr(pynetdicom.association, "time", object())
    assert reactor.missing_internals() == ["DULServiceProvider.kill_dul", "pynetdicom.association.time (the time module)"]
