"""A disk that fills up under ``axiom-flow serve``: its data dir on a small tmpfs.

What fits is answered Success and delivered; what does not is answered 0xA700 (Refused:
Out of Resources, PS3.4 B.2.3) on an association that stays usable; below
``settings.min_free_bytes`` new associations are refused and ``/status`` says so; once
space is freed the server takes associations again, and the refused instances, sent
again, are delivered. Nothing is left in ``tmp/``."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.support.dicomgen import make_ct_study
from tests.support.invariant import sop_uids
from tests.support.procs import AxiomServer, storescu, wait_for
from tests.support.procstats import MIB, back_to, echo, usage, warm_up
from tests.support.tmpfs import resize, tmpfs

pytestmark = pytest.mark.dcmtk

DISK = "32m"
FLOOR = 8 * MIB
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


def test_full_disk_answers_out_of_resources_then_recovers(tmp_path):
    # 12 MiB each: two fit on the disk, the third cannot be written; a small one to warm up
    instances = make_ct_study(tmp_path / "instances", 4, rows=2048, columns=3072)
    small = get_testdata_file("CT_small.dcm")
    out = tmp_path / "out"  # the destination is on another disk
    config = {"settings": {"min_free_bytes": FLOOR},
              "destinations": [{"id": "archive", "type": "filesystem", "path": str(out)}],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}]}
    with tmpfs(tmp_path / "disk", DISK) as disk, AxiomServer(disk, config) as server:
        tmp = server.data_dir / "tmp"
        warm_up(server, small)
        baseline = usage(server.proc.pid, tmp)

        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.dicom_port, ae_title="AXIOM")
        assert assoc.is_established
        try:
            statuses = {}
            for path in instances:
                rsp = assoc.send_c_store(dcmread(path))
                statuses[path] = rsp.Status
                assert assoc.is_established, "the association was dropped on a full disk"
            # the association is still good for what needs no disk
            assert assoc.send_c_echo().Status == SUCCESS
        finally:
            assoc.release()
        assert set(statuses.values()) <= {SUCCESS, OUT_OF_RESOURCES}
        assert list(statuses.values()).count(SUCCESS) >= 1
        assert list(statuses.values()).count(OUT_OF_RESOURCES) >= 1

        # below the floor: new associations are refused, and the status says why
        gateway = wait_for(lambda: (s := server.status()["gateway"])["below_floor"] and s, 10,
                           what="the status to report free space below the floor")
        assert gateway["free_bytes"] < gateway["min_free_bytes"] == FLOOR
        assert not echo(server.dicom_port)

        # an operator frees space: associations are taken again
        resize(disk, "128m")
        wait_for(lambda: echo(server.dicom_port), 10, what="a C-ECHO answer once space was freed")
        refused = [path for path, status in statuses.items() if status != SUCCESS]
        storescu(server.dicom_port, refused)
        server.wait_idle()

        # every instance, answered Success the first or the second time, was delivered
        assert sop_uids(out.rglob("*.dcm")) == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                                                for p in [small, *instances]}
        assert server.exceptions() == []
        back_to(baseline, server.proc.pid, tmp)
