"""What an operator sees for held instances, disabled destinations and resends, with
dcmtk sending into ``axiom-flow serve`` and restarts with another config."""

import httpx
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, storescu, wait_for

MR = get_testdata_file("MR_small.dcm")
ARCHIVE = {"id": "archive", "type": "filesystem", "path": "out"}
STOW_KEY = "outcomes-test-key"


def _config(*, default=(), archive_enabled=True, rules=None) -> dict:
    return {
        "destinations": [{**ARCHIVE, "enabled": archive_enabled}],
        "rulesets": [{"id": "main", "rules": rules or [
            {"id": "ct", "when": {"tag": "Modality", "value": "CT"}, "destinations": ["archive"]}]}],
        "default_route": {"destinations": list(default)},
        "settings": {"log_original_attributes": True},
        "stow": {"api_keys": "env:AXIOM_TEST_STOW_KEYS"},
    }


def _archived(server) -> list:
    return sorted((server.data_dir / "out").rglob("*.dcm"))


def _retry(server, record_id: str) -> dict:
    answer = server.retry(record_id)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_released_held_instance_is_planned_again_and_delivered(tmp_path):
    data = tmp_path / "data"
    with AxiomServer(data, _config()) as server:
        storescu(server.dicom_port, [MR])
        server.wait_idle()
        [held] = server.exceptions()
        assert held["status"] == "held" and "no rule matched" in held["reason"]
        # released under the same config: nowhere to go yet, so held again with a new record
        assert _retry(server, held["id"])["status"] == "retried"
        wait_for(lambda: len(server.exceptions()) == 2, 20, what="a second held record")
        [again] = [r for r in server.exceptions() if r["status"] == "held"]
        assert again["id"] != held["id"] and _archived(server) == []
    with AxiomServer(data, _config(default=["archive"]), dicom_port=server.dicom_port) as server:
        _retry(server, again["id"])
        wait_for(lambda: _archived(server), 20, what="the released instance at the archive")
        server.wait_idle()
        [out] = _archived(server)
        assert dcmread(out).SOPInstanceUID == dcmread(MR).SOPInstanceUID
        assert {r["status"] for r in server.exceptions()} == {"retried"}


def test_a_disabled_destination_holds_deliveries_until_enabled(tmp_path):
    data = tmp_path / "data"
    [ct] = make_ct_study(tmp_path / "ct", 1, rows=32, columns=32)
    with AxiomServer(data, _config(archive_enabled=False)) as server:
        storescu(server.dicom_port, [ct])
        wait_for(lambda: server.exceptions(), 20, what="a held record")
        server.wait_idle()
        [held] = server.exceptions()
        assert (held["status"], held["destination_id"]) == ("held", "archive")
        assert held["reason"] == "destination archive is disabled"
        assert _archived(server) == []
    with AxiomServer(data, _config(), dicom_port=server.dicom_port) as server:
        wait_for(lambda: _archived(server), 30, what="the held delivery sent once the destination is enabled")
        server.wait_idle()
        [out] = _archived(server)
        assert dcmread(out).SOPInstanceUID == dcmread(ct).SOPInstanceUID
        [record] = server.exceptions()
        assert record["status"] == "retried"


def test_resends_by_cstore_and_stow_are_duplicates_and_a_changed_data_set_is_a_conflict(tmp_path):
    [ct] = make_ct_study(tmp_path / "ct", 1, rows=32, columns=32)
    config = _config(rules=[{"id": "all", "destinations": ["archive"],
                             "actions": [{"action": "set", "tag": "InstitutionName", "value": "AXIOM"}]}])
    with AxiomServer(tmp_path / "data", config, env={"AXIOM_TEST_STOW_KEYS": STOW_KEY}) as server:
        storescu(server.dicom_port, [ct], calling_ae="MOD1")
        wait_for(lambda: _archived(server), 20, what="the first delivery")
        [out] = _archived(server)
        first = out.read_bytes()
        storescu(server.dicom_port, [ct], calling_ae="MOD2")  # another file meta (Source AE)
        stow = httpx.post(f"http://127.0.0.1:{server.http_port}/dicomweb/studies", content=ct.read_bytes(),
                          headers={"Content-Type": "application/dicom", "X-API-Key": STOW_KEY}, timeout=30)
        assert stow.status_code == 200, stow.text
        wait_for(lambda: server.status()["deliveries"].get("delivered", 0) >= 1, 20, what="deliveries")
        server.wait_idle()
        assert server.exceptions() == [], "an identical resend is no conflict"
        assert _archived(server) == [out] and out.read_bytes() == first

        changed = dcmread(ct)
        changed.SeriesDescription = "CHANGED AFTER THE FIRST SEND"
        changed.save_as(tmp_path / "changed.dcm")
        storescu(server.dicom_port, [tmp_path / "changed.dcm"])
        wait_for(lambda: server.exceptions(), 20, what="a conflict record")
        server.wait_idle()
        [conflict] = server.exceptions()
        assert conflict["status"] == "refused" and conflict["destination_id"] == "archive"
        assert "different data set" in conflict["reason"]
        assert out.read_bytes() == first
