"""The response keeper (shared.dicom.reactor.keep_responses, on the C-STORE sender's and
the DIMSE poller's associations) on real pynetdicom associations: what the reactor
would drop as "unexpected" goes back to the sender; requests still reach pynetdicom's
own handling."""

import logging

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification

from shared.dicom import reactor

WAIT_S = 2.0


@pytest.fixture
def peer():
    """A pynetdicom storage SCP on a free port."""
    scp = AE(ae_title="PEER")
    scp.add_supported_context(Verification)
    scp.add_supported_context(CTImageStorage)
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def associate(peer):
    """``associate(handlers)``: an established association to the peer, released after."""
    opened = []

    def make(handlers=()):
        scu = AE(ae_title="AXIOM")
        scu.add_requested_context(Verification)
        scu.add_requested_context(CTImageStorage)
        scu.dimse_timeout = WAIT_S
        assoc = scu.associate("127.0.0.1", peer, ae_title="PEER", evt_handlers=list(handlers))
        assert assoc.is_established
        opened.append(assoc)
        return assoc

    yield make
    for assoc in opened:
        assoc.release()


def _context_id(assoc, sop_class) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)


def _store_response(message_id: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = generate_uid()
    rsp.Status = 0x0000
    return rsp


def test_a_response_the_reactor_takes_goes_back_to_the_sender(associate):
    assoc = associate()
    reactor.keep_responses(assoc)
    context_id = _context_id(assoc, CTImageStorage)
    rsp = _store_response(message_id=7)
    assoc._serve_request(rsp, context_id)  # as the reactor does with what it took off the queue
    # what send_c_store waits on; the association's own reactor may take it meanwhile,
    # and puts it back again
    assert assoc.dimse.get_msg(block=True) == (context_id, rsp)


def test_without_the_keeper_pynetdicom_drops_it(associate):
    """What the keeper is for: pynetdicom 3.0 logs "unexpected" and the sender waits
    out the DIMSE timeout. If this fails, pynetdicom kept it: see
    docs/upstream/reactor-takes-response.md."""
    assoc = associate()
    context_id = _context_id(assoc, CTImageStorage)
    assoc._serve_request(_store_response(message_id=7), context_id)
    assert assoc.dimse.get_msg(block=True) == (None, None)


def test_a_request_still_goes_to_pynetdicoms_handling(associate):
    """A C-ECHO-RQ from the peer on our association reaches the Verification SCP
    (PS3.7 9.1.5) and its handler, and is not queued for the sender."""
    echoed = []

    def on_echo(event):
        echoed.append(event.request.MessageID)
        return 0x0000

    assoc = associate([(evt.EVT_C_ECHO, on_echo)])
    reactor.keep_responses(assoc)
    req = C_ECHO()
    req.MessageID = 41
    req.AffectedSOPClassUID = Verification
    assoc._serve_request(req, _context_id(assoc, Verification))
    assert echoed == [41]
    assert assoc.dimse.msg_queue.empty()
    assert assoc.send_c_echo().Status == 0x0000  # the association is still good


def test_a_pynetdicom_without_serve_request_keeps_its_own_handling(monkeypatch, caplog):
    monkeypatch.setattr(reactor, "_keeper_missing", None)
    monkeypatch.delattr(Association, "_serve_request")
    assoc = Association(AE(), "requestor")
    with caplog.at_level(logging.WARNING, logger=reactor.log.name):
        reactor.keep_responses(assoc)
        reactor.keep_responses(Association(AE(), "requestor"))
    assert "_serve_request" not in vars(assoc)
    warnings = [r.getMessage() for r in caplog.records if r.name == reactor.log.name]
    assert len(warnings) == 1 and "Association._serve_request" in warnings[0]
