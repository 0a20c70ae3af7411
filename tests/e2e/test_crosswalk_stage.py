"""The crosswalk stage in ``axiom-flow serve`` against a real PostgreSQL (a throwaway
cluster of tests/support/databases.py): instances sent with dcmtk arrive with the
research ids of the database's map; the database stopped mid-run makes deliveries wait,
and they complete once it is back; a miss held by the map's policy is released through
the API once the map has the entry; the status counts the lookups."""

from __future__ import annotations

import time

import sqlalchemy
from pydicom import dcmread

from tests.support.databases import load_table, postgres_server  # noqa: F401 (fixture)
from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, storescu, wait_for

OUTAGE_S = 15
ROWS = [("HOSP-A", "PAT-1", "R-0001"), ("HOSP-A", "PAT-2", "R-0002"), ("HOSP-B", "PAT-1", "R-1001")]


def _load(server, rows) -> None:
    load_table(server, "research_ids", ["issuer", "mrn", "research_id"], rows)


def _add_row(server, issuer: str, mrn: str, research_id: str) -> None:
    engine = sqlalchemy.create_engine(server.url())
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO research_ids VALUES (:i, :m, :r)"),
                     {"i": issuer, "m": mrn, "r": research_id})
    engine.dispose()


def _config(db) -> dict:
    return {
        "crosswalk_sources": [{"id": "mpi", "type": "postgresql", "host": "127.0.0.1", "port": db.port,
                               "database": db.database, "user": db.user, "password": "env:AXIOM_TEST_MPI_PASSWORD",
                               "connect_timeout_s": 2}],
        "crosswalks": [{"id": "research", "source": "mpi", "table": "research_ids", "keys": ["issuer", "mrn"],
                        "value": "research_id", "on_miss": "hold"}],
        "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "main", "rules": [{
            "id": "pseudonymize", "when": {"tag": "Modality", "value": "CT"},
            "actions": [{"action": "crosswalk", "tag": "PatientID", "table": "research",
                         "key_tags": ["IssuerOfPatientID", "PatientID"]},
                        {"action": "ai_standardize", "tag": "StudyDescription", "kind": "study_description"}],
            "destinations": ["archive"]}]}],
    }


def _study(tmp_path, name: str, issuer: str, patient_id: str, count: int = 2) -> list:
    paths = make_ct_study(tmp_path / name, count, rows=16, columns=16, patient_id=patient_id)
    for path in paths:
        ds = dcmread(path)
        ds.IssuerOfPatientID = issuer
        ds.StudyDescription = "  ct   head  "
        ds.save_as(path)
    return paths


def _arrived(server) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (Patient ID, Study Description) at the archive."""
    out = {}
    for path in (server.data_dir / "out").rglob("*.dcm"):
        ds = dcmread(path)
        out[str(ds.SOPInstanceUID)] = (str(ds.PatientID), str(ds.StudyDescription))
    return out


def _uids(paths) -> set[str]:
    return {str(dcmread(p).SOPInstanceUID) for p in paths}


def test_instances_arrive_with_the_databases_values_and_wait_out_an_outage(tmp_path, postgres_server):  # noqa: F811
    db = postgres_server
    db.start()
    _load(db, ROWS)
    env = {"AXIOM_TEST_MPI_PASSWORD": db.password}
    with AxiomServer(tmp_path / "data", _config(db), env=env) as server:
        first = _study(tmp_path, "a", "HOSP-A", "PAT-1")
        other_issuer = _study(tmp_path, "b", "HOSP-B", "PAT-1", count=1)
        storescu(server.dicom_port, first + other_issuer)
        wait_for(lambda: len(_arrived(server)) == 3, 60, what="three instances at the archive")
        arrived = _arrived(server)
        assert {arrived[u] for u in _uids(first)} == {("R-0001", "CT HEAD")}
        assert {arrived[u] for u in _uids(other_issuer)} == {("R-1001", "CT HEAD")}  # the issuer is part of the key

        db.stop()  # mid-run: lookups fail, deliveries wait (nothing is recorded or sent unmapped)
        try:
            during = _study(tmp_path, "c", "HOSP-A", "PAT-2")
            storescu(server.dicom_port, during)
            wait_for(lambda: server.status()["queue"].get("crosswalk"), 30, what="the plans waiting for the database")
            time.sleep(OUTAGE_S)  # longer than settings.stage_max_attempts' tries take: the plans still wait
            assert len(_arrived(server)) == 3 and server.exceptions() == []
            research = server.api_status()["crosswalks"]["research"]
            assert research["errors"] >= 2 and "'mpi' did not answer" in research["last_error"]
        finally:
            db.start()
        wait_for(lambda: len(_arrived(server)) == 5, 120, what="the waiting instances once the database is back")
        assert {_arrived(server)[u] for u in _uids(during)} == {("R-0002", "CT HEAD")}

        unknown = _study(tmp_path, "d", "HOSP-A", "PAT-9", count=1)
        storescu(server.dicom_port, unknown)
        wait_for(lambda: server.exceptions(), 60, what="a held record for the unknown patient")
        [held] = server.exceptions()
        assert held["status"] == "held" and held["stage"] == "crosswalk"
        assert "research" in held["reason"] and "PAT-9" not in held["reason"]
        assert len(_arrived(server)) == 5
        _add_row(db, "HOSP-A", "PAT-9", "R-0009")  # released at once: the miss the map's cache holds is asked again
        answer = server.retry(held["id"])
        assert answer.status_code == 200, answer.text
        wait_for(lambda: len(_arrived(server)) == 6, 60, what="the released instance")
        assert {_arrived(server)[u] for u in _uids(unknown)} == {("R-0009", "CT HEAD")}
        server.wait_idle()

        crosswalks = server.api_status()["crosswalks"]
        research = crosswalks["research"]
        assert research["hits"] >= 6 and research["misses"] >= 1  # the outage's tries may add some
        assert research["lookups"] == research["hits"] + research["misses"]
        standardizer = server.api_status()["standardizer"]
        assert standardizer["lookups"] == standardizer["deterministic"] == 6 and standardizer["model"] is None
    assert "PAT-1" not in server.log_path.read_text() and "PAT-9" not in server.log_path.read_text()


def test_a_synced_map_keeps_routing_with_the_database_down(tmp_path, postgres_server):  # noqa: F811
    """The map copied into serve's store (its sync thread) answers while PostgreSQL is
    stopped: instances sent then arrive mapped, and nothing waits or is recorded."""
    db = postgres_server
    db.start()
    _load(db, ROWS)
    config = _config(db)
    config["crosswalks"][0]["sync"] = {"every_s": 3600}
    with AxiomServer(tmp_path / "data", config, env={"AXIOM_TEST_MPI_PASSWORD": db.password}) as server:
        def synced() -> bool:  # as the status shows it
            return bool((server.api_status()["crosswalks"]["research"].get("sync") or {}).get("synced_at"))

        wait_for(synced, 60, what="the map's first sync")
        db.stop()
        try:
            paths = _study(tmp_path, "a", "HOSP-B", "PAT-1") + _study(tmp_path, "b", "HOSP-A", "PAT-2", count=1)
            storescu(server.dicom_port, paths)
            wait_for(lambda: len(_arrived(server)) == 3, 60, what="the instances, mapped from the synced copy")
            arrived = _arrived(server)
            assert sorted(arrived[u][0] for u in _uids(paths)) == ["R-0002", "R-1001", "R-1001"]
            server.wait_idle()
            assert server.exceptions() == []
            sync = server.api_status()["crosswalks"]["research"]["sync"]
            assert sync["last"]["added"] == len(ROWS) and sync["error"] is None
        finally:
            db.start()
