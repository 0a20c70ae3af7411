"""Exception records and status through the API (``/api/v1``): filters and pages,
a record's attempts from real failed sends, retry, release and archive of one record
and of many (a job), the audit entry of each action, the status counters the stages
keep, and health. Run over the local adapters and a real C-STORE peer where a send
must fail or arrive."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from shared import exceptions, stages
from shared.api.app import PREFIX, create_api
from shared.api.audit import AUDIT
from shared.api.auth import authenticate
from shared.api.permissions import Principal, Role
from shared.errors import RetryLater
from shared.inputs.ingest import Ingestor
from shared.messages import TOPIC_DELIVER, BlobRef, Delivery, IngestMetadata
from tests.support.procs import free_port
from tests.support.stageports import build_ports, run_all

OPERATOR = Principal(user_id="op1", email="op1@example.org", role=Role.OPERATOR, via="api_key")
_BLOB = BlobRef(bucket="ingest", name="2026/12/01/1.2.3-x.dcm")
_AT = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)


def delivery(destination_id: str, uid: str = "1.2.3") -> Delivery:
    return Delivery(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1", destination_id=destination_id, blob=_BLOB,
                    sha256="0" * 64, source=_BLOB, ingest=IngestMetadata(source_type="cstore", source_id="main",
                                                                                 received_at=_AT))


DESTINATIONS = [{"id": "archive", "type": "filesystem", "path": "out"},
                {"id": "off", "type": "filesystem", "path": "off", "enabled": False},
                {"id": "pacs", "type": "cstore", "ae_title": "PACS", "host": "127.0.0.1", "port": 1,
                 "timeout_s": 5, "retry": {"max_attempts": 3}}]


@pytest.fixture
def ports(tmp_path):
    return build_ports(tmp_path, {"listeners": [{"id": "main", "port": 0}], "destinations": DESTINATIONS,
                                  "rulesets": [{"id": "r", "rules": [{"id": "all", "destinations": ["archive"]}]}]})


@pytest.fixture
def client(ports):
    api = create_api(ports)
    api.dependency_overrides[authenticate] = lambda: OPERATOR
    return TestClient(api)


def failed(ports, destination_id="archive", reason="connection refused", uid="1.2.3", at=None) -> str:
    record_id = exceptions.record_exception(
        ports, stage="route", status="failed", reason=reason, sop_instance_uid=uid, destination_id=destination_id,
        topic=TOPIC_DELIVER, body=delivery(destination_id, uid).model_dump_json())
    if at is not None:  # as if recorded then
        record = ports.docs.get(exceptions.EXCEPTIONS, record_id)
        ports.docs.set(exceptions.EXCEPTIONS, record_id, {**record, "created_at": at.isoformat()})
    return record_id


def ids(answer) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [r["id"] for r in answer.json()["items"]]


def test_filters_select_by_status_stage_destination_reason_and_time(ports, client):
    day = datetime(2026, 5, 1, tzinfo=timezone.utc)
    old = failed(ports, "archive", "association rejected", at=day)
    new = failed(ports, "pacs", "connection refused", at=day + timedelta(hours=2))
    held = exceptions.hold_delivery(ports, delivery("off"), "destination off is disabled", stage="morph")
    quarantined = exceptions.record_exception(ports, stage="match", status="quarantined", reason="not DICOM")
    url = f"{PREFIX}/exceptions"
    assert set(ids(client.get(url))) == {old, new, held, quarantined}
    assert ids(client.get(url, params={"status": "failed"})) == [old, new]  # oldest first
    assert ids(client.get(url, params={"stage": "morph"})) == [held]
    assert ids(client.get(url, params={"destination_id": "pacs"})) == [new]
    assert ids(client.get(url, params={"reason": "REJECTED"})) == [old]
    assert ids(client.get(url, params={"since": "2026-05-01T01:00:00Z", "until": "2026-05-01T03:00"})) == [new]
    assert ids(client.get(url, params={"until": "2026-05-01T02:00:00+00:00"})) == [old]  # until excluded


@pytest.mark.parametrize("params, named", [
    ({"status": "bogus"}, "status 'bogus'"), ({"stage": "nowhere"}, "stage 'nowhere'"),
    ({"since": "yesterday"}, "since 'yesterday'"), ({"until": "2026-13-01"}, "until '2026-13-01'"),
    ({"archived": "maybe"}, "archived 'maybe'"), ({"limit": "0"}, "limit '0'"), ({"cursor": "!!"}, "cursor"),
    ({"colour": "red"}, "colour"), ({"destination_id": "nope"}, "destination_id 'nope'"),
])
def test_an_unknown_filter_value_is_a_400_naming_it(client, params, named):
    answer = client.get(f"{PREFIX}/exceptions", params=params)
    assert answer.status_code == 400 and named in answer.json()["detail"]


def test_a_destination_gone_from_the_config_is_a_filter_while_records_name_it(ports, client):
    kept = failed(ports, destination_id="retired")  # its destination was removed since
    assert ids(client.get(f"{PREFIX}/exceptions", params={"destination_id": "retired"})) == [kept]
    assert client.get(f"{PREFIX}/exceptions", params={"destination_id": "pacs"}).json()["items"] == []
    assert client.post(f"{PREFIX}/exceptions/retry", params={"destination_id": "nope"}).status_code == 400


def test_pages_follow_next_until_every_record_is_seen_once(ports, client):
    made = [failed(ports, uid=f"1.2.{n}") for n in range(7)]
    seen, url, pages = [], f"{PREFIX}/exceptions?status=failed&limit=3", 0
    while url:
        page = client.get(url).json()
        seen += [r["id"] for r in page["items"]]
        pages += 1
        if page["next"]:
            failed(ports, uid="1.2.99")  # added meanwhile: after the cursor, seen on a later page
        url = page["next"]
    assert pages >= 3 and len(seen) == len(set(seen)) and set(made) <= set(seen)


def test_a_failed_delivery_keeps_every_attempt_with_its_time_and_reason(ports, client):
    """Three real sends to a closed port: two retried, the third recorded; the record
    shows all three."""
    port = free_port()
    ports.reconfigure({"destinations": [{**DESTINATIONS[2], "port": port}]})
    sent = delivery("pacs")
    for attempt in (1, 2):
        with pytest.raises(RetryLater):
            stages.route(ports, sent, attempt)
    assert stages.route(ports, sent, 3) == "failed"
    [record] = client.get(f"{PREFIX}/exceptions", params={"destination_id": "pacs"}).json()["items"]
    shown = client.get(f"{PREFIX}/exceptions/{record['id']}").json()
    assert shown["attempt_count"] == 3 and len(shown["attempts"]) == 3
    assert all(a["reason"] and datetime.fromisoformat(a["at"]) for a in shown["attempts"])
    assert shown["sop_instance_uid"] == "1.2.3" and shown["retry_topic"] == TOPIC_DELIVER
    assert ports.docs.list(exceptions.DELIVERY_ATTEMPTS) == {}  # moved into the record
    assert client.get(f"{PREFIX}/exceptions/nope").status_code == 404


def audit_entries(ports) -> list[dict]:
    return [e for _, e in sorted(ports.docs.list(AUDIT).items())]


def test_retry_release_and_archive_one_record_each_audited(ports, client):
    record_id = failed(ports)
    answer = client.post(f"{PREFIX}/exceptions/{record_id}/retry")
    assert answer.status_code == 200 and answer.json()["status"] == "retried"
    assert [Delivery.from_bytes(m) for m in ports.bus.on(TOPIC_DELIVER)] == [delivery("archive")]

    held = exceptions.hold_delivery(ports, delivery("off"), "destination off is disabled", stage="route")
    refused = client.post(f"{PREFIX}/exceptions/{record_id}/release")  # retried, not held
    assert refused.status_code == 409 and "not held" in refused.json()["detail"]
    still_off = client.post(f"{PREFIX}/exceptions/{held}/release")
    assert still_off.status_code == 409 and "disabled" in still_off.json()["detail"]
    ports.reconfigure({"destinations": [{"id": "off", "type": "filesystem", "path": "off"}]})
    assert client.post(f"{PREFIX}/exceptions/{held}/release").json()["status"] == "retried"
    assert len(ports.bus.on(TOPIC_DELIVER)) == 2

    archived = client.post(f"{PREFIX}/exceptions/{record_id}/archive")
    assert archived.status_code == 200 and archived.json()["archived_at"]
    assert record_id not in ids(client.get(f"{PREFIX}/exceptions"))
    assert ids(client.get(f"{PREFIX}/exceptions", params={"archived": "true"})) == [record_id]
    assert ports.docs.get(exceptions.EXCEPTIONS, record_id) is not None  # kept

    entries = audit_entries(ports)
    assert [(e["action"], e["target"], e["user_id"]) for e in entries] == [
        ("exceptions.retry", f"exceptions/{record_id}", "op1"),
        ("exceptions.release", f"exceptions/{held}", "op1"),
        ("exceptions.archive", f"exceptions/{record_id}", "op1")]
    assert entries[0]["before"]["status"] == "failed" and entries[0]["after"]["status"] == "retried"


def wait_job(client, url: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(url).json()
        if job["state"] == "finished" or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_bulk_retry_is_a_job_over_what_the_filters_match(ports, client):
    to_retry = [failed(ports, "pacs", uid=f"1.2.{n}") for n in range(5)]
    failed(ports, "archive", uid="1.9")  # another destination: not retried
    quarantined = exceptions.record_exception(ports, stage="route", status="failed", reason="no message",
                                              destination_id="pacs")
    assert client.post(f"{PREFIX}/exceptions/retry").status_code == 400  # everything needs all=true
    started = client.post(f"{PREFIX}/exceptions/retry", params={"destination_id": "pacs", "status": "failed"})
    assert started.status_code == 202 and started.json()["total"] == 6
    job = wait_job(client, started.json()["url"])
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("finished", 6, 5, 1)
    assert job["errors"][0]["item"] == quarantined and "no message to retry" in job["errors"][0]["error"]
    assert sorted(Delivery.from_bytes(m).sop_instance_uid for m in ports.bus.on(TOPIC_DELIVER)) == \
        sorted(f"1.2.{n}" for n in range(5))
    retried = {e["target"] for e in audit_entries(ports) if e["action"] == "exceptions.retry"}
    assert retried == {f"exceptions/{i}" for i in to_retry}
    assert client.get(f"{PREFIX}/jobs/nope").status_code == 404


def test_bulk_archive_hides_the_matches(ports, client):
    gone = [failed(ports, reason="peer said no") for _ in range(3)]
    kept = failed(ports, reason="timeout")
    job = wait_job(client, client.post(f"{PREFIX}/exceptions/archive", params={"reason": "said no"}).json()["url"])
    assert (job["done"], job["failed"]) == (3, 0)
    assert ids(client.get(f"{PREFIX}/exceptions")) == [kept]
    assert sorted(ids(client.get(f"{PREFIX}/exceptions", params={"archived": "true"}))) == sorted(gone)


def received(ports, path):
    """As the gateway's listener "main" stores a C-STORE."""
    Ingestor(ports.blobs, "ingest").ingest_file(path, IngestMetadata(source_type="cstore", source_id="main"))
    return ports.events[-1]


def test_status_counts_what_the_stages_did_per_listener_and_destination(ports, client, tmp_path):
    from pydicom.data import get_testdata_file

    ports.reconfigure({"listeners": [{"id": "main", "port": 0}], "destinations": DESTINATIONS[:2],
                       "rulesets": [{"id": "r", "rules": [{"id": "all", "destinations": ["archive", "off"]}]}]})
    run_all(ports, received(ports, get_testdata_file("CT_small.dcm")))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all" * 10)
    stages.match(ports, received(ports, bad))
    got = client.get(f"{PREFIX}/status").json()
    main = got["listeners"]["main"]
    assert (main["received"], main["processed"], main["quarantined"]) == (2, 1, 1) and main["last_error"]
    archive, off = got["destinations"]["archive"], got["destinations"]["off"]
    assert (archive["enqueued"], archive["delivered"], archive["queued"]) == (1, 1, 0)
    assert (off["holds"], off["held"], off["queued"]) == (1, 1, 0)
    assert got["exceptions"] == 2 and got["held_deliveries"] == 1
    [held] = ids(client.get(f"{PREFIX}/exceptions", params={"status": "held"}))
    client.post(f"{PREFIX}/exceptions/{held}/archive")
    assert client.get(f"{PREFIX}/status").json()["destinations"]["off"]["held"] == 0


def test_status_reads_the_counters_not_the_records(ports, client, monkeypatch):
    for n in range(3):
        failed(ports, uid=f"1.2.{n}")
    listed = []
    original = type(ports.docs).list
    monkeypatch.setattr(type(ports.docs), "list", lambda self, c: listed.append(c) or original(self, c))
    client.get(f"{PREFIX}/status")
    assert listed == ["counters"]


def test_retries_that_fail_again_set_the_last_error_and_count_failed(ports, client):
    port = free_port()
    ports.reconfigure({"destinations": [{**DESTINATIONS[2], "port": port, "retry": {"max_attempts": 1}}]})
    assert stages.route(ports, delivery("pacs"), 1) == "failed"
    pacs = client.get(f"{PREFIX}/status").json()["destinations"]["pacs"]
    assert pacs["failed"] == 1 and pacs["last_error"] and pacs["last_error_at"]


class BrokenDocs:
    """A document store whose database cannot be opened."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise OSError(5, "Input/output error")
        return fail


def test_health_is_ok_or_503_naming_what_is_down(ports, client, tmp_path):
    ok = client.get(f"{PREFIX}/health")
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    ports.docs = BrokenDocs()
    down = client.get(f"{PREFIX}/health")
    assert down.status_code == 503 and down.json()["down"] == ["documents"]
    assert "Input/output error" in down.json()["checks"]["documents"]["error"]


def test_the_old_unauthenticated_routes_are_gone(ports):
    """Exception records and status are served under /api/v1 only, behind a key."""
    from shared.http import create_app

    record_id = failed(ports)
    app = create_app(ports, stow=False).test_client()
    assert app.get("/status").status_code == 404
    assert app.get("/exceptions").status_code == 404
    assert app.post(f"/exceptions/{record_id}/retry").status_code == 404
    assert app.post(f"{PREFIX}/exceptions/{record_id}/retry").status_code == 401
    assert ports.docs.get(exceptions.EXCEPTIONS, record_id)["status"] == "failed"
    assert ports.bus.on(TOPIC_DELIVER) == []
    assert app.get("/healthz").status_code == 200


def test_status_without_a_runtime_status_has_no_runtime_key(client):
    """GCP: the API has no status of a runtime of its own to show."""
    got = client.get(f"{PREFIX}/status").json()
    assert "runtime" not in got and {"listeners", "sources", "destinations", "exceptions"} <= set(got)


def test_records_of_an_older_version_are_listed_once_given_the_archived_field(ports, client):
    kept = failed(ports)
    old = {k: v for k, v in ports.docs.get(exceptions.EXCEPTIONS, kept).items() if k != "archived"}
    ports.docs.set(exceptions.EXCEPTIONS, "old-open", {**old, "id": "old-open"})
    ports.docs.set(exceptions.EXCEPTIONS, "old-archived", {**old, "id": "old-archived", "archived_at": old["created_at"]})
    assert ids(client.get(f"{PREFIX}/exceptions")) == [kept]  # the index does not see them

    assert exceptions.backfill_archived(ports.docs) == 2
    assert sorted(ids(client.get(f"{PREFIX}/exceptions"))) == sorted([kept, "old-open"])
    assert ids(client.get(f"{PREFIX}/exceptions", params={"archived": "true"})) == ["old-archived"]
    ports.docs.set(exceptions.EXCEPTIONS, "later", {**old, "id": "later"})
    assert exceptions.backfill_archived(ports.docs) == 0  # once per store
