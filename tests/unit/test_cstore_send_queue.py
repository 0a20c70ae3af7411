"""The C-STORE destination's bounded send queue (shared/destinations/cstore.py): P-DATA
waits for room while the DUL thread takes PDUs, and fails rather than waiting forever
once that thread has stopped or takes nothing. A plain thread stands in for the DUL."""

from __future__ import annotations

import threading
import time

import pytest
from pynetdicom.pdu_primitives import A_ABORT, P_DATA

from shared.destinations.cstore import _SendQueue


class Dul(threading.Thread):
    """A thread that takes one PDU from ``queue`` each time ``step`` is set."""

    def __init__(self):
        super().__init__(daemon=True)
        self._kill_thread = False
        self.queue: _SendQueue | None = None
        self.step, self.taken = threading.Event(), []

    def run(self):
        while not self._kill_thread:
            if self.step.wait(0.05):
                self.step.clear()
                self.taken.append(self.queue.get())


def started_dul(maxsize: int = 2, stall_s: float = 30.0) -> Dul:
    dul = Dul()
    dul.queue = _SendQueue(dul, maxsize, stall_s)
    dul.start()
    return dul


def test_p_data_waits_for_room_and_goes_on_when_a_pdu_is_taken():
    dul = started_dul()
    dul.queue.put(P_DATA())
    dul.queue.put(P_DATA())
    third = threading.Thread(target=dul.queue.put, args=(P_DATA(),))
    third.start()
    third.join(0.3)
    assert third.is_alive() and dul.queue.qsize() == 2  # full: the third waits
    dul.step.set()
    third.join(5)
    assert not third.is_alive() and len(dul.taken) == 1 and dul.queue.qsize() == 2
    dul._kill_thread = True


def test_other_primitives_never_wait():
    dul = started_dul(maxsize=1)
    dul.queue.put(P_DATA())
    dul.queue.put(A_ABORT())  # an abort must get through a full queue
    assert dul.queue.qsize() == 2
    dul._kill_thread = True


def test_a_put_fails_once_the_dul_thread_has_stopped():
    dul = started_dul(maxsize=1)
    dul.queue.put(P_DATA())
    dul._kill_thread = True
    dul.join(5)
    with pytest.raises(ConnectionError):
        dul.queue.put(P_DATA())


def test_a_put_fails_when_the_peer_takes_nothing_for_the_timeout():
    dul = started_dul(maxsize=1, stall_s=0.3)
    dul.queue.put(P_DATA())
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        dul.queue.put(P_DATA())
    assert 0.25 < time.monotonic() - t < 5
    dul._kill_thread = True


def test_a_pynetdicom_without_the_internals_relied_on_sends_as_shipped(monkeypatch, caplog):
    from pynetdicom import AE
    from pynetdicom.association import Association

    from shared.destinations import cstore

    assoc = Association(AE(), "requestor")
    assert cstore._missing_send_internals(assoc) == []  # the pinned pynetdicom has them all
    shipped = assoc.dul.to_provider_queue
    assoc.acceptor.maximum_length = 0  # a peer that takes PDUs of any length
    del assoc.dul._kill_thread
    monkeypatch.setattr(cstore, "_unbounded_warned", False)
    cstore._bound_sending(assoc, 5.0)
    assert assoc.dul.to_provider_queue is shipped and assoc.acceptor.maximum_length == 0
    assert "lacks DULServiceProvider()._kill_thread" in caplog.text

    fenced = Association(AE(), "requestor")
    fenced.acceptor.maximum_length = 0
    cstore._bound_sending(fenced, 5.0)
    assert isinstance(fenced.dul.to_provider_queue, _SendQueue)
    assert fenced.acceptor.maximum_length == cstore.MAX_SEND_PDU
