"""Listeners follow the config of a running ``axiom-flow serve`` without a restart: a
listener created through the config API takes dcmtk storescu's instances; its port
changed, the old port refuses connections and the new one stores; its allow-list
changed, the next association is rejected and counted; a listener whose port is taken
is reported in ``/status`` while the others keep working; deleted, its port refuses
connections while an association it had already accepted still stores."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from shared.api.app import PREFIX
from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, accepts_connections, free_port, storescu, wait_for

pytestmark = pytest.mark.dcmtk


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Queued in the backlog of a socket that was closing: ask again.
        return False


def archived(folder: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.rglob("*.dcm")}


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_listeners_open_change_and_close_with_the_config(tmp_path):
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "shared.cli", "users", "create-admin", "--email", "ed@example.org",
                           "--data-dir", str(data)], capture_output=True, text=True, check=True)
    auth = {"Authorization": f"Api-Key {made.stdout.strip().splitlines()[-1]}"}
    archive = tmp_path / "archive"
    config = {"destinations": [{"id": "archive", "type": "filesystem", "path": str(archive)}],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}]}
    files = make_ct_study(tmp_path / "in", 6, rows=32, columns=32)
    first_port, second_port = free_port(), free_port()
    with AxiomServer(data, config) as server:
        base = f"http://127.0.0.1:{server.http_port}{PREFIX}"

        def api_status() -> dict:
            return httpx.get(f"{base}/status", headers=auth, timeout=10).json()

        # a new listener opens
        assert refuses_connections(first_port)
        created = httpx.post(f"{base}/config/listeners", headers=auth, timeout=10,
                             json={"id": "second", "ae_title": "AXIOM", "host": "127.0.0.1", "port": first_port})
        assert created.status_code == 201, created.text
        wait_for(lambda: accepts_connections(first_port), 10, what="the new listener to open")
        storescu(first_port, [files[0]])
        wait_for(lambda: uid(files[0]) in archived(archive), 30, what="the instance sent to the new listener")
        assert server.status()["listeners"] == {"main": server.dicom_port, "second": first_port}

        # its port changes: the old one closes, the new one stores
        moved = httpx.patch(f"{base}/config/listeners/second", headers=auth, timeout=10, json={"port": second_port})
        assert moved.status_code == 200, moved.text
        wait_for(lambda: accepts_connections(second_port), 10, what="the listener on its new port")
        wait_for(lambda: refuses_connections(first_port), 10, what="the old port to close")
        storescu(second_port, [files[1]])
        wait_for(lambda: uid(files[1]) in archived(archive), 30, what="the instance sent to the new port")
        assert server.status()["listeners"]["second"] == second_port

        # an allow-list changes: the next association is rejected, and counted
        limited = httpx.patch(f"{base}/config/listeners/second", headers=auth, timeout=10,
                              json={"allowed_sources": ["10.0.0.0/8"]})
        assert limited.status_code == 200, limited.text

        def rejected() -> bool:
            sent = storescu(second_port, [files[2]], check=False)
            return sent.returncode != 0 and b"Association Rejected" in sent.stdout + sent.stderr

        wait_for(rejected, 10, interval=0.5, what="the allow-list to apply")
        second = api_status()["listeners"]["second"]
        assert second["refused"] >= 1 and "allowed_sources" in second["last_error"]

        # a listener whose port is taken: reported, and the others keep working
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy_port = taken.getsockname()[1]
            busy = httpx.post(f"{base}/config/listeners", headers=auth, timeout=10,
                              json={"id": "busy", "host": "127.0.0.1", "port": busy_port})
            assert busy.status_code == 201, busy.text
            wait_for(lambda: "busy" in server.status()["gateway"]["listener_errors"], 10,
                     what="the listener that cannot bind to be reported")
            assert server.status()["listeners"]["busy"] is None
            assert str(busy_port) in api_status()["listeners"]["busy"]["last_error"]
            storescu(server.dicom_port, [files[3]])
            wait_for(lambda: uid(files[3]) in archived(archive), 30, what="the instance sent to main")

        # deleted: the port refuses connections; an association accepted before still stores
        allowed = httpx.patch(f"{base}/config/listeners/second", headers=auth, timeout=10,
                              json={"allowed_sources": None})
        assert allowed.status_code == 200, allowed.text
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage, dcmread(files[4]).file_meta.TransferSyntaxUID)

        def associated():
            assoc = ae.associate("127.0.0.1", second_port, ae_title="AXIOM")
            return assoc if assoc.is_established else assoc.abort()

        assoc = wait_for(associated, 10, interval=0.5, what="an association with the unrestricted listener")
        try:
            deleted = httpx.delete(f"{base}/config/listeners/second", headers=auth, timeout=10)
            assert deleted.status_code in (200, 204), deleted.text
            wait_for(lambda: refuses_connections(second_port), 10, what="the deleted listener's port to close")
            assert assoc.send_c_store(files[4]).Status == 0x0000
        finally:
            assoc.release()
            ae.shutdown()
        wait_for(lambda: uid(files[4]) in archived(archive), 30, what="the instance of the accepted association")
        assert "second" not in server.status()["listeners"]
        server.wait_idle()
        assert server.exceptions() == []
