"""Protocol abuse against the C-STORE listener of ``axiom-flow serve``: bare connections,
idle associations, an oversized PDU, transfers aborted or reset half-way, garbage, an
empty data set. Each test ends the same way (:func:`recovered`): the server answers a
C-ECHO, what it answered Success was delivered, and its threads, descriptors, temporary
files and memory are back to what they were before the test. Loopback only; a second
source address (127.0.0.2) plays the attacker."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import read_file_meta_info

from shared.inputs.cstore.server import ConnectionLimits
from tests.support.dicomgen import make_ct_study
from tests.support.invariant import sop_uids
from tests.support.procs import AxiomServer, storescu, wait_for
from tests.support.procstats import MIB, back_to, echo, reset_peak, usage, warm_up
from tests.support.rawdul import (
    A_ABORT_TYPE,
    A_ASSOCIATE_AC_TYPE,
    NO_DATA_SET,
    RawAssociation,
    closed_by_peer,
    connect,
    reset,
)

pytestmark = pytest.mark.dcmtk

ATTACKER = "127.0.0.2"
LIMITS = ConnectionLimits()
CONFIG = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
          "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with AxiomServer(tmp_path_factory.mktemp("hostile") / "data", CONFIG) as srv:
        warm_up(srv, get_testdata_file("CT_small.dcm"))
        yield srv


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> list[Path]:
    return make_ct_study(tmp_path_factory.mktemp("instances"), 12, rows=256, columns=256)


def tmp_dir(server: AxiomServer) -> Path:
    return server.data_dir / "tmp"


def before(server: AxiomServer):
    return usage(server.proc.pid, tmp_dir(server))


def delivered(server: AxiomServer) -> set[str]:
    return sop_uids((server.data_dir / "out").rglob("*.dcm"))


def recovered(server: AxiomServer, baseline, *, good: Path) -> None:
    """The server answers C-ECHO, takes and delivers ``good`` (the instances it answered
    Success are all delivered: nothing else was sent), and is back to ``baseline``."""
    assert echo(server.dicom_port), "no C-ECHO answer after the attack"
    storescu(server.dicom_port, [good])
    server.wait_idle()
    assert str(dcmread(good).SOPInstanceUID) in delivered(server)
    back_to(baseline, server.proc.pid, tmp_dir(server))


def data_set_of(path: Path) -> bytes:
    meta = read_file_meta_info(path)
    return path.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength:]


def test_bare_connections_do_not_lock_modalities_out(server, instances):
    """Connections that never send an A-ASSOCIATE-RQ: one address gets at most
    ``per_peer`` of them, a modality elsewhere still associates at once, and each is
    closed by the server (ARTIM, PS3.8 9.1.5)."""
    baseline = before(server)
    bare = [connect(server.dicom_port, source=ATTACKER) for _ in range(2 * LIMITS.max_associations)]
    try:
        assert echo(server.dicom_port), "a modality was locked out by bare connections"
        assert all(closed_by_peer(sock, timeout=LIMITS.acse_timeout_s + 15) for sock in bare)
    finally:
        for sock in bare:
            sock.close()
    recovered(server, baseline, good=instances[0])


def test_idle_associations_keep_capacity_for_others_and_time_out(server, instances):
    """Associations that never send a request: one address holds at most ``per_peer``
    (the rest are refused), others still associate, and each idle one is aborted after
    the network timeout."""
    baseline = before(server)
    idle = [RawAssociation(server.dicom_port, source=ATTACKER) for _ in range(LIMITS.per_peer + 4)]
    try:
        answers = [assoc.associate() for assoc in idle]
        assert answers.count(A_ASSOCIATE_AC_TYPE) == LIMITS.per_peer
        assert echo(server.dicom_port), "a modality was locked out by idle associations"
        established = [a for a, answer in zip(idle, answers) if answer == A_ASSOCIATE_AC_TYPE]
        for assoc in established:
            assoc.sock.settimeout(LIMITS.network_timeout_s + 20)
            assert assoc.read_pdu()[0] == A_ABORT_TYPE
    finally:
        for assoc in idle:
            assoc.close()
    recovered(server, baseline, good=instances[1])


def test_oversized_pdu_is_aborted_at_its_header(server, instances):
    """A P-DATA-TF PDU announcing far more than the maximum length the listener offered
    (PS3.8 D.1) is answered with an A-ABORT before its body is read: the server's peak
    memory does not grow with it."""
    baseline = before(server)
    reset_peak(server.proc.pid)
    peak_before = usage(server.proc.pid).peak_rss
    announced = 64 * MIB
    with RawAssociation(server.dicom_port) as assoc:
        assert assoc.associate() == A_ASSOCIATE_AC_TYPE
        assert assoc.peer_max_pdu < announced

        def flood():
            try:
                assoc.send(assoc.pdata_header(announced))
                block = bytes(MIB)
                for _ in range(announced // MIB):
                    assoc.send(block)
            except OSError:
                pass  # the server closed the connection: what we want

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        assert assoc.read_pdu()[0] == A_ABORT_TYPE
        sender.join(30)
    assert usage(server.proc.pid).peak_rss - peak_before < announced // 4
    recovered(server, baseline, good=instances[2])


@pytest.mark.parametrize("ending", ["a-abort", "reset", "closed-mid-pdu", "release-mid-data-set"])
def test_transfers_cut_short_leave_no_temporary_file(server, instances, ending):
    """A C-STORE whose data set stops half-way (the sender aborts, resets, closes inside
    a PDU, or releases) is not answered Success, is stored nowhere, and its temporary
    file is removed when the association ends."""
    baseline = before(server)
    cut = instances[4:9]
    for path in cut:
        ds = dcmread(path, stop_before_pixels=True)
        data = data_set_of(path)
        assoc = RawAssociation(server.dicom_port)
        assert assoc.associate() == A_ASSOCIATE_AC_TYPE
        assoc.send_pdv(1, 0x03, assoc.c_store_command(ds.SOPClassUID, ds.SOPInstanceUID))
        assoc.send_data_set(1, data[: len(data) // 2], last=False)
        if ending == "a-abort":
            assoc.abort()
        elif ending == "reset":
            reset(assoc.sock)
        elif ending == "closed-mid-pdu":
            assoc.send(assoc.pdata_header(4096) + b"\0" * 100)
            assoc.close()
        else:
            assoc.release()
    recovered(server, baseline, good=instances[3])
    assert not {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in cut} & delivered(server)
    assert not list(tmp_dir(server).iterdir())


def test_empty_data_set_is_answered(server, instances):
    """A C-STORE with an empty data set, with none, or whose announced data set never
    comes (what pynetdicom's requestor sends for an empty one) is answered with a failure
    and a comment; the association lives on."""
    baseline = before(server)
    ds = dcmread(instances[9], stop_before_pixels=True)
    with RawAssociation(server.dicom_port) as assoc:
        assert assoc.associate() == A_ASSOCIATE_AC_TYPE
        assoc.send_pdv(1, 0x03, assoc.c_store_command(ds.SOPClassUID, ds.SOPInstanceUID))
        assoc.send_data_set(1, b"")
        empty = assoc.read_response()
        assoc.send_pdv(1, 0x03, assoc.c_store_command(ds.SOPClassUID, ds.SOPInstanceUID, data_set_type=NO_DATA_SET))
        missing = assoc.read_response()
        assoc.send_pdv(1, 0x03, assoc.c_store_command(ds.SOPClassUID, ds.SOPInstanceUID))
        never_sent = assoc.read_response()  # within DATA_SET_WAIT_S, not the network timeout
        still_there = assoc.echo()
        assoc.release()
    assert (empty.status, empty.error_comment) == (0xA900, "Empty data set")
    assert (missing.status, missing.error_comment) == (0xA900, "Empty data set")
    assert never_sent.status == 0xA900 and never_sent.error_comment.startswith("No data set received")
    assert still_there.status == 0x0000
    assert str(ds.SOPInstanceUID) not in delivered(server)
    recovered(server, baseline, good=instances[10])


def test_garbage_connections_leave_nothing_behind(server, instances):
    """300 connections sending seeded random bytes, half of them headed like a PDU
    (a known type, a random length): memory, threads and descriptors come back."""
    baseline = before(server)
    rng = random.Random(11)
    for n in range(300):
        noise = rng.randbytes(rng.randint(1, 8192))
        if n % 2:
            noise = bytes([rng.randint(1, 7), 0]) + rng.randbytes(4) + noise
        sock = connect(server.dicom_port, source=ATTACKER)
        try:
            sock.sendall(noise)
            closed_by_peer(sock, timeout=0.05) if n % 3 else reset(sock)
        except OSError:
            pass  # refused or reset by the server
        finally:
            sock.close()
    wait_for(lambda: echo(server.dicom_port), 30, what="a C-ECHO answer")
    recovered(server, baseline, good=instances[11])
