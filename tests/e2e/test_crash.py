"""kill -9 in the middle of a send: every instance answered Success is delivered,
and delivered exactly once, after a restart.

The one exception is a C-STORE that was on the wire when the process died: the peer
may have stored it without our seeing the response. Those deliveries are "in doubt":
the ledger records them and they are sent again (a C-STORE of the same SOP Instance
is idempotent at a PACS). Nothing else may arrive twice."""

import json
import re
import sqlite3
import subprocess
import time
from collections import Counter

import pytest
from pydicom import dcmread

from tests.support.dicomgen import make_ct_study
from tests.support.procs import DCMTK_ENV, AxiomServer, require, storescu, wait_for

SUCCESS = b"Received Store Response (Success)"


def answered_success(log: bytes) -> list[str]:
    """Files storescu saw answered Success, from its -v log."""
    done, current = [], None
    for line in log.splitlines():
        if m := re.match(rb"I: Sending file: (.+)$", line.strip()):
            current = m.group(1).decode()
        elif SUCCESS in line and current:
            done.append(current)
            current = None
    return done


def in_doubt(server: AxiomServer, destination_id: str) -> set[str]:
    with sqlite3.connect(server.data_dir / "state.db") as db:
        rows = db.execute("SELECT info FROM deliveries WHERE in_doubt=1").fetchall()
    infos = [json.loads(info) for (info,) in rows]
    return {i["sop_instance_uid"] for i in infos if i["destination_id"] == destination_id}


@pytest.mark.parametrize("pipeline_processes,route_processes", [(0, 0), (1, 0), (1, 1)],
                         ids=["one-process", "pipeline-process", "route-process"])
def test_kill_9_mid_send_loses_and_duplicates_nothing(tmp_path, storescp, pipeline_processes, route_processes):
    files = make_ct_study(tmp_path / "study", 200, rows=256, columns=256)
    uid_of = {str(p): dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    config = {
        "destinations": [
            {"id": "archive", "type": "filesystem", "path": "out"},
            {"id": "pacs", "type": "cstore", "ae_title": storescp.ae_title, "host": "127.0.0.1", "port": storescp.port},
        ],
        "rulesets": [{"id": "main", "rules": [{
            "id": "all", "actions": [{"action": "set", "tag": "StationName", "value": "ROUTED"}],
            "destinations": ["archive", "pacs"]}]}],
    }
    env = {"AXIOM_PIPELINE_PROCESSES": str(pipeline_processes), "AXIOM_ROUTE_PROCESSES": str(route_processes)}
    server = AxiomServer(tmp_path / "data", config, env=env).start()
    assert len(server.status()["pipeline_processes"]) == pipeline_processes + route_processes
    log_path = tmp_path / "storescu.log"
    with open(log_path, "wb") as log:
        sender = subprocess.Popen(
            [require("storescu"), "-v", "-aec", "AXIOM", "127.0.0.1", str(server.dicom_port), *map(str, files)],
            stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV,
        )
        # Kill while instances are still arriving and earlier ones are being routed.
        wait_for(lambda: log_path.read_bytes().count(SUCCESS) >= 80, 60, interval=0.01, what="80 stored")
        server.kill()
        sender.wait(30)
    acked = answered_success(log_path.read_bytes())
    assert 80 <= len(acked) < 200, "the kill must land mid-send"

    restarted = AxiomServer(tmp_path / "data", config, dicom_port=server.dicom_port, env=env).start()
    try:
        restarted.wait_idle(120)
        acked_uids = {uid_of[f] for f in acked}
        archive = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (restarted.data_dir / "out").rglob("*.dcm")}
        assert acked_uids <= archive, "an instance answered Success was lost"
        at_pacs = Counter(dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in storescp.files())
        assert acked_uids <= set(at_pacs), "an instance answered Success never reached the C-STORE peer"
        twice = {uid for uid, n in at_pacs.items() if n > 1}
        assert all(at_pacs[uid] == 2 for uid in twice)
        assert twice <= in_doubt(restarted, "pacs"), "an instance not in doubt was delivered twice"
        assert len(in_doubt(restarted, "archive")) <= 4  # at most one per route worker

        # The modality sends the rest (and, not knowing, some it had sent before).
        unacked = [p for p in files if str(p) not in set(acked)]
        storescu(restarted.dicom_port, unacked)
        restarted.wait_idle(120)
        expected = 200 + len(twice)
        wait_for(lambda: storescp.received_count() >= expected, 60, what="all 200 at storescp")
        time.sleep(0.5)
        assert storescp.received_count() == expected
        assert {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in storescp.files()} == set(uid_of.values())
        assert restarted.status()["exceptions"] == 0
    finally:
        restarted.stop()
