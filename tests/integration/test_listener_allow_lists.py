"""Listener allow-lists against real requestors: pynetdicom and dcmtk ``echoscu`` /
``storescu`` associate with an embedded runtime's listeners and receive the
A-ASSOCIATE-RJ PS3.8 9.3.4 prescribes for each refusal (rejected-permanent, service
user; reason 7 for a called AE title, 3 for a calling AE title, 1 for a source
address), IPv4 and IPv6; each refusal is counted in the listener's ``refused`` with its
last error (what ``GET /status`` shows); an allowed sender still stores, and the
instance arrives at the destination with the data set it sent."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from shared import counters
from shared.config import parse_config
from shared.dicom.io import content_digest
from shared.runtime.local import EmbeddedRuntime
from tests.support.procs import DCMTK_ENV, free_port, require, storescu, wait_for

pytestmark = pytest.mark.dcmtk

REJECTED_PERMANENT, SERVICE_USER = 0x01, 0x01
NO_REASON, CALLING_AE_NOT_RECOGNIZED, CALLED_AE_NOT_RECOGNIZED = 0x01, 0x03, 0x07


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = _has_ipv6_loopback()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allow-lists")
    listeners = [
        {"id": "titles", "ae_title": "AXIOM", "host": "127.0.0.1", "port": free_port(),
         "called_ae_titles": ["AXIOM", "AXIOM_CT"], "calling_ae_titles": ["GOODSCU"]},
        {"id": "net4", "host": "127.0.0.1", "port": free_port(), "allowed_sources": ["10.0.0.0/8", "fd00::/8"]},
        {"id": "open", "ae_title": "AXIOM", "host": "127.0.0.1", "port": free_port()},
    ]
    if IPV6:
        listeners += [
            {"id": "v6", "host": "::1", "port": free_port(), "allowed_sources": ["::1"]},
            {"id": "v6-elsewhere", "host": "::1", "port": free_port(), "allowed_sources": ["fd00::/8", "127.0.0.0/8"]},
        ]
    config = {"listeners": listeners,
              "destinations": [{"id": "archive", "type": "filesystem", "path": str(tmp / "archive")}],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}]}
    rt = EmbeddedRuntime(parse_config(config), tmp / "data", http_port=None, poll_sources=False)
    rt.start()
    rt.archive = tmp / "archive"
    yield rt
    rt.stop()


def port_of(runtime, listener_id: str) -> int:
    return runtime.status()["listeners"][listener_id]


def associate(host: str, port: int, *, called: str = "AXIOM", calling: str = "GOODSCU"):
    """A pynetdicom requestor's association: (established, result, source, reason)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    assoc = ae.associate(host, port, ae_title=called)
    try:
        if assoc.is_established:
            assert assoc.send_c_echo().Status == 0x0000
            return True, None, None, None
        assert assoc.is_rejected, "neither established nor rejected"
        rsp = assoc.acceptor.primitive
        return False, rsp.result, rsp.result_source, rsp.diagnostic
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def listener_counters(runtime, listener_id: str) -> dict:
    return counters.snapshot(runtime.ports)["listeners"][listener_id]


def test_called_and_calling_ae_titles_are_rejected_with_their_reasons(runtime):
    port = port_of(runtime, "titles")
    before = listener_counters(runtime, "titles")["refused"]
    assert associate("127.0.0.1", port, called="SOMEONE_ELSE") == (
        False, REJECTED_PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNIZED)
    assert associate("127.0.0.1", port, calling="STRANGER") == (
        False, REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED)
    # every title of the list is answered, not only the listener's ae_title
    assert associate("127.0.0.1", port, called="AXIOM_CT")[0] is True
    assert associate("127.0.0.1", port, called="AXIOM")[0] is True
    got = listener_counters(runtime, "titles")
    assert got["refused"] - before == 2
    assert "STRANGER" in got["last_error"] and "calling_ae_titles" in got["last_error"]
    assert got["last_error_at"]


def test_dcmtk_sees_the_rejection_and_stores_nothing(runtime):
    port = port_of(runtime, "titles")
    echo = subprocess.run([require("echoscu"), "-v", "-aet", "GOODSCU", "-aec", "NOT_ME", "127.0.0.1", str(port)],
                          capture_output=True, env=DCMTK_ENV, timeout=30)
    said = (echo.stdout + echo.stderr).decode()
    assert echo.returncode != 0
    assert "Association Rejected" in said and "Rejected Permanent" in said
    assert "Called AE Title Not Recognized" in said
    sent = get_testdata_file("CT_small.dcm")
    store = storescu(port, [sent], calling_ae="STRANGER", check=False)
    said = (store.stdout + store.stderr).decode()
    assert store.returncode != 0 and "Calling AE Title Not Recognized" in said


def test_an_allowed_sender_still_stores_and_the_bytes_arrive(runtime):
    sent = Path(get_testdata_file("MR_small.dcm"))
    result = storescu(port_of(runtime, "titles"), [sent], calling_ae="GOODSCU", called_ae="AXIOM")
    assert b"Received Store Response (Success)" in result.stdout + result.stderr
    delivered = wait_for(lambda: [p for p in runtime.archive.rglob("*.dcm")
                                  if content_digest(p) == content_digest(sent)], 30, what="the instance archived")
    assert len(delivered) == 1
    assert listener_counters(runtime, "titles")["received"] >= 1


def test_a_source_address_outside_the_allowed_networks_is_rejected(runtime):
    assert associate("127.0.0.1", port_of(runtime, "net4")) == (False, REJECTED_PERMANENT, SERVICE_USER, NO_REASON)
    got = listener_counters(runtime, "net4")
    assert got["refused"] == 1 and "127.0.0.1" in got["last_error"] and "allowed_sources" in got["last_error"]
    # the listener without allow-lists takes any called AE title, as before allow-lists
    assert associate("127.0.0.1", port_of(runtime, "open"), called="ANY_TITLE", calling="ANYONE")[0] is True
    assert listener_counters(runtime, "open")["refused"] == 0


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")
def test_ipv6_sources_are_checked_against_ipv6_networks(runtime):
    assert associate("::1", port_of(runtime, "v6"))[0] is True
    assert associate("::1", port_of(runtime, "v6-elsewhere")) == (
        False, REJECTED_PERMANENT, SERVICE_USER, NO_REASON)
    got = listener_counters(runtime, "v6-elsewhere")
    assert got["refused"] == 1 and "::1" in got["last_error"]
    assert listener_counters(runtime, "v6")["refused"] == 0
