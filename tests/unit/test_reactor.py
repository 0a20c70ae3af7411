"""pynetdicom associations wait for work, not for the clock (shared.dicom.reactor)."""

import time

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
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
