"""A real failed delivery, seen and retried through the API over HTTP: dcmtk storescu
sends an instance to the gateway, the C-STORE destination (a dcmtk storescp) is down,
the failure record appears in ``GET /api/v1/exceptions`` and in ``GET /api/v1/status``;
storescp is started, the record is retried through the API, and storescp receives the
instance exactly once (a second retry of the same record is acknowledged by the
delivery ledger, not sent)."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import HTTPException, Request
from pydicom import dcmread
from pydicom.data import get_testdata_file

from shared.api.app import PREFIX, create_api
from shared.api.auth import authenticate
from shared.api.permissions import Principal, Role
from shared.config import parse_config
from shared.http import HostCheck, HttpServer, create_app
from shared.runtime.local import EmbeddedRuntime
from tests.support.procs import AxiomServer, StoreSCP, free_port, storescu, wait_for

pytestmark = pytest.mark.dcmtk

KEY = "integration-operator-key"
AUTH = {"Authorization": f"Api-Key {KEY}"}

def config_for(scp: StoreSCP, dicom_port: int | None = None) -> dict:
    config = {
        "destinations": [{"id": "pacs", "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1",
                          "port": scp.port, "timeout_s": 5, "retry": {"max_attempts": 2, "initial_backoff_s": 0.1}}],
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["pacs"]}]}],
    }
    if dicom_port is not None:
        config["listeners"] = [{"id": "main", "ae_title": "AXIOM", "host": "127.0.0.1", "port": dicom_port}]
    return config


def key_check(request: Request) -> Principal:
    """Until API keys are stored (the auth branch): this one key is an operator's."""
    if request.headers.get("Authorization") != AUTH["Authorization"]:
        raise HTTPException(401, "no valid credentials")
    return Principal(user_id="op1", email="op1@example.org", role=Role.OPERATOR, via="api_key")


def test_a_failed_delivery_retried_through_the_api_arrives_once(tmp_path):
    scp = StoreSCP(tmp_path / "scp")  # not started: its port is closed
    dicom_port = free_port()
    runtime = EmbeddedRuntime(parse_config(config_for(scp, dicom_port)), tmp_path / "data", http_port=None,
                              poll_sources=False)
    api = create_api(runtime.ports)
    api.dependency_overrides[authenticate] = key_check
    host_check = HostCheck("127.0.0.1", None)
    server = HttpServer(create_app(runtime.ports, runtime.status, stow=False, api=api, host_check=host_check),
                        "127.0.0.1", 0, max_request_body=1 << 20)
    host_check.port = server.port
    base = f"http://127.0.0.1:{server.port}{PREFIX}"
    sent = get_testdata_file("CT_small.dcm")
    uid = str(dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
    runtime.start()
    server.start()
    try:
        storescu(dicom_port, [sent])

        def failure():
            got = httpx.get(f"{base}/exceptions", params={"destination_id": "pacs"}, headers=AUTH, timeout=10)
            assert got.status_code == 200, got.text
            return got.json()["items"]

        [record] = wait_for(failure, 60, interval=0.2, what="the failure record")
        assert (record["status"], record["stage"], record["sop_instance_uid"]) == ("failed", "route", uid)
        shown = httpx.get(f"{base}/exceptions/{record['id']}", headers=AUTH, timeout=10).json()
        assert shown["attempt_count"] == 2 and len(shown["attempts"]) == 2
        pacs = httpx.get(f"{base}/status", headers=AUTH, timeout=10).json()["destinations"]["pacs"]
        assert (pacs["enqueued"], pacs["failed"], pacs["delivered"]) == (1, 1, 0) and pacs["last_error"]
        assert runtime.status()["listeners"] == {"main": dicom_port}
        main = httpx.get(f"{base}/status", headers=AUTH, timeout=10).json()["listeners"]["main"]
        assert (main["received"], main["processed"]) == (1, 1)

        scp.start()
        retried = httpx.post(f"{base}/exceptions/{record['id']}/retry", headers=AUTH, timeout=10)
        assert retried.status_code == 200 and retried.json()["status"] == "retried"
        wait_for(lambda: scp.received_count() == 1, 30, what="the retried delivery at storescp")
        wait_for(lambda: httpx.get(f"{base}/status", headers=AUTH, timeout=10).json()["destinations"]["pacs"]
                 ["delivered"] == 1, 30, what="the delivered counter")
        # the same record retried again: the ledger knows it arrived
        assert httpx.post(f"{base}/exceptions/{record['id']}/retry", headers=AUTH, timeout=10).status_code == 200
        wait_for(lambda: httpx.get(f"{base}/status", headers=AUTH, timeout=10).json()["destinations"]["pacs"]
                 ["duplicate"] == 1, 30, what="the second retry acknowledged as a duplicate")
        time.sleep(0.5)
        assert scp.received_count() == 1
        assert [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()] == [uid]
        assert httpx.post(f"{base}/exceptions/{record['id']}/retry", timeout=10).status_code == 401  # no key
    finally:
        server.stop()
        runtime.stop()
        scp.stop()


def test_a_failed_delivery_retried_through_serve_api(tmp_path):
    """``axiom-flow serve`` as a process, as an operator runs it: the first admin made
    with ``axiom-flow users create-admin``, the failure listed through the API with
    that key (401 without it), retried once the peer is up, delivered exactly once."""
    import subprocess
    import sys

    scp = StoreSCP(tmp_path / "scp")
    made = subprocess.run([sys.executable, "-m", "shared.cli", "users", "create-admin", "--email", "ops@example.org",
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, check=True)
    auth = {"Authorization": f"Api-Key {made.stdout.strip().splitlines()[-1]}"}
    try:
        with AxiomServer(tmp_path / "data", config_for(scp)) as server:
            storescu(server.dicom_port, [get_testdata_file("CT_small.dcm")])
            base = f"http://127.0.0.1:{server.http_port}{PREFIX}"
            assert httpx.get(f"{base}/exceptions", timeout=10).status_code == 401

            def failures():
                return httpx.get(f"{base}/exceptions", params={"stage": "route"}, headers=auth, timeout=10).json()["items"]

            wait_for(failures, 60, interval=0.2, what="the failure record in the API")
            [record] = failures()
            assert record["status"] == "failed" and record["destination_id"] == "pacs"
            scp.start()
            assert httpx.post(f"{base}/exceptions/{record['id']}/retry", headers=auth, timeout=10).status_code == 200
            wait_for(lambda: scp.received_count() == 1, 30, what="the retried delivery at storescp")
            server.wait_idle()
            assert scp.received_count() == 1
    finally:
        scp.stop()
