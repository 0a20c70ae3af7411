"""The config changed through the API of a running ``axiom-flow serve`` applies to the
next instance, without a restart: dcmtk storescu sends one instance before a rule's
action is replaced (with If-Match) and one after; then the seeds' example ruleset is
created as a user would type it, and a CT chest instance arrives at
``primary-storage`` with the new Series Description."""

from __future__ import annotations

import subprocess
import sys

import httpx
from pydicom import dcmread

from shared.api.app import PREFIX
from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, storescu, wait_for
from tests.support.seeds import SEEDS_EXAMPLE


def _files(folder) -> dict[str, object]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dcmread(p, stop_before_pixels=True)
            for p in folder.rglob("*.dcm")} if folder.exists() else {}


def test_a_rule_changed_through_the_api_applies_to_the_next_instance(tmp_path):
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "shared.cli", "users", "create-admin", "--email", "ed@example.org",
                           "--data-dir", str(data)], capture_output=True, text=True, check=True)
    auth = {"Authorization": f"Api-Key {made.stdout.strip().splitlines()[-1]}"}
    config = {
        "destinations": [{"id": "archive", "type": "filesystem", "path": str(tmp_path / "archive")},
                         {"id": "primary-storage", "type": "filesystem", "path": str(tmp_path / "primary")}],
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"], "actions": [
            {"action": "set", "tag": "InstitutionName", "value": "BEFORE"}]}]}],
    }
    first, second, chest = make_ct_study(tmp_path / "in", 3, rows=32, columns=32)
    ds = dcmread(chest)
    ds.BodyPartExamined = "CHEST"
    ds.save_as(chest)
    with AxiomServer(data, config) as server:
        base = f"http://127.0.0.1:{server.http_port}{PREFIX}"
        storescu(server.dicom_port, [first])
        wait_for(lambda: len(_files(tmp_path / "archive")) == 1, 30, what="the first instance")

        current = httpx.get(f"{base}/config/rulesets/main", headers=auth, timeout=10)
        assert current.status_code == 200
        ruleset = current.json()
        ruleset["rules"][0]["actions"][0]["value"] = "AFTER"
        stale = httpx.put(f"{base}/config/rulesets/main", json=ruleset, timeout=10,
                          headers={**auth, "If-Match": '"not-the-etag"'})
        assert stale.status_code == 412
        changed = httpx.put(f"{base}/config/rulesets/main", json=ruleset, timeout=10,
                            headers={**auth, "If-Match": current.headers["ETag"]})
        assert changed.status_code == 200, changed.text
        storescu(server.dicom_port, [second])
        wait_for(lambda: len(_files(tmp_path / "archive")) == 2, 30, what="the second instance")

        created = httpx.post(f"{base}/config/rulesets", json=SEEDS_EXAMPLE, headers=auth, timeout=10)
        assert created.status_code == 201, created.text
        storescu(server.dicom_port, [chest])
        wait_for(lambda: len(_files(tmp_path / "primary")) == 1, 30, what="the chest CT at primary-storage")
        server.wait_idle()
        assert server.exceptions() == []

    archived = _files(tmp_path / "archive")
    uid = lambda path: str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)  # noqa: E731
    assert archived[uid(first)].InstitutionName == "BEFORE"
    assert archived[uid(second)].InstitutionName == "AFTER"
    [(chest_uid, at_primary)] = _files(tmp_path / "primary").items()
    assert chest_uid == uid(chest) and at_primary.SeriesDescription == "CHEST CT - PROCESSED"


def test_a_held_instance_released_through_the_api_is_delivered_under_the_new_rules(tmp_path):
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "shared.cli", "users", "create-admin", "--email", "op@example.org",
                           "--data-dir", str(data)], capture_output=True, text=True, check=True)
    auth = {"Authorization": f"Api-Key {made.stdout.strip().splitlines()[-1]}"}
    config = {
        "destinations": [{"id": "archive", "type": "filesystem", "path": str(tmp_path / "archive")}],
        "rulesets": [{"id": "main", "rules": [{"id": "mr-only", "when": {"tag": "Modality", "value": "MR"},
                                               "destinations": ["archive"]}]}],
    }
    [ct] = make_ct_study(tmp_path / "in", 1, rows=32, columns=32)
    with AxiomServer(data, config) as server:
        base = f"http://127.0.0.1:{server.http_port}{PREFIX}"
        storescu(server.dicom_port, [ct])
        server.wait_idle()
        listed = httpx.get(f"{base}/exceptions", params={"status": "held"}, headers=auth, timeout=10)
        assert listed.status_code == 200, listed.text
        [held] = listed.json()["items"]
        assert "no rule matched" in held["reason"] and _files(tmp_path / "archive") == {}

        current = httpx.get(f"{base}/config/rulesets/main", headers=auth, timeout=10)
        ruleset = current.json()
        ruleset["rules"].append({"id": "ct", "when": {"tag": "Modality", "value": "CT"}, "destinations": ["archive"],
                                 "actions": [{"action": "set", "tag": "InstitutionName", "value": "RELEASED"}]})
        changed = httpx.put(f"{base}/config/rulesets/main", json=ruleset, timeout=10,
                            headers={**auth, "If-Match": current.headers["ETag"]})
        assert changed.status_code == 200, changed.text

        released = httpx.post(f"{base}/exceptions/{held['id']}/release", headers=auth, timeout=10)
        assert released.status_code == 200, released.text
        wait_for(lambda: _files(tmp_path / "archive"), 30, what="the released instance at the archive")
        server.wait_idle()
        record = httpx.get(f"{base}/exceptions/{held['id']}", headers=auth, timeout=10).json()
        assert record["status"] == "retried"
        assert httpx.get(f"{base}/exceptions", params={"status": "held"}, headers=auth, timeout=10).json()["items"] == []

    [(uid, delivered)] = _files(tmp_path / "archive").items()
    assert uid == str(dcmread(ct).SOPInstanceUID) and delivered.InstitutionName == "RELEASED"
