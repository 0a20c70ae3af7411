"""Each Cloud Functions entry point (functions/main.py) called as functions-framework
calls it: a real-shaped CloudEvent (Pub/Sub push, structured mode) or HTTP request,
through ``create_app(...).test_client()``. The process's ports are the local adapters
(tests/support/stageports.py) instead of the Google clients, so no emulator is needed;
what the entry point decodes reaches the real stage code."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from functions_framework import create_app
from pydicom import dcmread
from pydicom.data import get_testdata_file

from shared import exceptions
from shared.adapters.pubsub import DLQ_DELIVERY_COUNT, DLQ_SUBSCRIPTION, TOPIC_ATTRIBUTE, TYPE_ATTRIBUTE
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers import source_status
from shared.messages import TOPIC_DELIVER, TOPIC_INGEST, TOPIC_PLANNED, Delivery, IngestMetadata, Plan
from shared.runtime import gcp
from tests.support.procs import free_port
from tests.support.stageports import build_ports, config

MAIN = str(Path(__file__).parents[2] / "functions" / "main.py")
CT = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def ports(tmp_path, monkeypatch):
    ports = build_ports(tmp_path, config(
        {"id": "ct", "when": {"tag": "Modality", "value": "CT"},
         "actions": [{"action": "set", "tag": "StationName", "value": "FN"}], "destinations": ["archive"]},
        destinations=[{"id": "archive", "type": "filesystem", "path": "out"},
                      {"id": "off", "type": "filesystem", "path": "off", "enabled": False}]))
    monkeypatch.setattr(gcp, "_ports", ports)  # what gcp.ports() hands every entry point
    return ports


def push(target: str, data: bytes, attributes: dict | None = None, *, attempt: int | None = None):
    """POST a Pub/Sub push CloudEvent to the function ``target``; its HTTP answer."""
    message = {"data": base64.b64encode(data).decode(), "messageId": uuid.uuid4().hex[:12],
               "publishTime": "2026-12-01T10:00:00Z", "attributes": attributes or {}}
    body = {"message": message, "subscription": f"projects/p/subscriptions/axiom-{target}"}
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    event = {"specversion": "1.0", "type": "google.cloud.pubsub.topic.v1.messagePublished",
             "source": f"//pubsub.googleapis.com/projects/p/topics/axiom-{target}", "id": message["messageId"],
             "time": "2026-12-01T10:00:00Z", "datacontenttype": "application/json", "data": body}
    app = create_app(target=target, source=MAIN, signature_type="cloudevent")
    return app.test_client().post("/", json=event, headers={"Content-Type": "application/cloudevents+json"})


def gcs_notification(ports, blob, event_type="OBJECT_FINALIZE") -> tuple[bytes, dict]:
    """The ingest bucket's notification as GCS sends it (payload JSON_API_V1)."""
    resource = {"kind": "storage#object", "bucket": blob.bucket, "name": blob.name, "generation": blob.generation or "1",
                "contentType": "application/dicom", "metadata": ports.blobs.metadata(blob)}
    attributes = {"eventType": event_type, "bucketId": blob.bucket, "objectId": blob.name,
                  "objectGeneration": blob.generation or "1", "payloadFormat": "JSON_API_V1",
                  "notificationConfig": "projects/_/buckets/ingest/notificationConfigs/1", "eventTime": "2026-12-01T10:00:00Z"}
    return json.dumps(resource).encode(), attributes


def received(ports, path=CT):
    return Ingestor(ports.blobs, "ingest").ingest_file(path, IngestMetadata(source_type="cstore", calling_ae="MOD1"))


def test_match_plans_a_finalized_ingest_object(ports):
    blob = received(ports)
    answer = push("match", *gcs_notification(ports, blob))
    assert answer.status_code == 200, answer.data
    [plan] = ports.bus.on(TOPIC_PLANNED)
    assert plan.blob.name == blob.name and plan.destination_ids == ["archive"]
    assert plan.ingest.calling_ae == "MOD1"  # from the notification's object metadata


def test_match_ignores_other_gcs_events_and_takes_a_retried_object_finalized(ports):
    blob = received(ports)
    assert push("match", *gcs_notification(ports, blob, "OBJECT_DELETE")).status_code == 200
    assert ports.bus.on(TOPIC_PLANNED) == []
    retried = json.dumps({"v": 1, "blob": blob.model_dump()}).encode()  # an exception record's message
    assert push("match", retried, {TOPIC_ATTRIBUTE: TOPIC_INGEST}).status_code == 200
    assert [p.blob.name for p in ports.bus.on(TOPIC_PLANNED)] == [blob.name]


def test_morph_then_route_deliver_the_changed_instance(ports, tmp_path):
    push("match", *gcs_notification(ports, received(ports)))
    [plan] = ports.bus.on(TOPIC_PLANNED)
    assert push("morph", plan.to_bytes(), {TOPIC_ATTRIBUTE: TOPIC_PLANNED, TYPE_ATTRIBUTE: "Plan"}).status_code == 200
    [delivery] = ports.bus.on(TOPIC_DELIVER)
    assert push("route", delivery.to_bytes(), {TOPIC_ATTRIBUTE: TOPIC_DELIVER}, attempt=1).status_code == 200
    [out] = (tmp_path / "out").rglob("*.dcm")
    assert dcmread(out).StationName == "FN" and dcmread(out).SOPInstanceUID == dcmread(CT).SOPInstanceUID


def test_route_gives_up_on_the_attempt_pubsub_counts(ports):
    """A peer that is down: before the destination's last attempt the function fails
    (Pub/Sub redelivers); at Pub/Sub's deliveryAttempt == max_attempts it records."""
    ports.reconfigure(config({"id": "all", "destinations": ["pacs"]}, destinations=[
        {"id": "pacs", "type": "cstore", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "timeout_s": 2,
         "retry": {"max_attempts": 3}}]))
    push("match", *gcs_notification(ports, received(ports)))
    push("morph", ports.bus.on(TOPIC_PLANNED)[0].to_bytes())
    delivery = ports.bus.on(TOPIC_DELIVER)[0]
    assert push("route", delivery.to_bytes(), attempt=2).status_code == 500
    assert exceptions.list_exceptions(ports) == []
    assert push("route", delivery.to_bytes(), attempt=3).status_code == 200
    [record] = exceptions.list_exceptions(ports)
    assert record["status"] == "failed" and record["reason"].startswith("after 3 attempt(s)")
    assert Delivery.model_validate_json(record["retry"]["body"]) == delivery


def test_dead_letter_rebuilds_what_pubsub_forwarded(ports):
    """A plan Pub/Sub gave up on after its max delivery attempts: original data and
    attributes, plus the CloudPubSubDeadLetterSource* ones."""
    push("match", *gcs_notification(ports, received(ports)))
    plan = ports.bus.on(TOPIC_PLANNED)[0]
    attributes = {TOPIC_ATTRIBUTE: TOPIC_PLANNED, TYPE_ATTRIBUTE: "Plan", DLQ_DELIVERY_COUNT: "5",
                  DLQ_SUBSCRIPTION: "projects/p/subscriptions/axiom-morph"}
    assert push("dead_letter", plan.to_bytes(), attributes).status_code == 200
    [record] = exceptions.list_exceptions(ports)
    assert record["status"] == "failed" and record["stage"] == TOPIC_PLANNED
    assert record["sop_instance_uid"] == plan.sop_instance_uid and "5 attempt(s)" in record["reason"]
    assert Plan.model_validate_json(record["retry"]["body"]) == plan


def test_dead_letter_of_a_gcs_notification_keeps_it_as_match_takes_it(ports):
    blob = received(ports)
    data, attributes = gcs_notification(ports, blob)
    assert push("dead_letter", data, {**attributes, DLQ_DELIVERY_COUNT: "7"}).status_code == 200
    [record] = exceptions.list_exceptions(ports)
    assert record["retry"]["topic"] == TOPIC_INGEST and record["blob"] == str(blob)
    exceptions.retry_exception(ports, record["id"])
    [(topic, body)] = ports.bus.sent
    assert topic == TOPIC_INGEST and json.loads(body)["blob"]["name"] == blob.name


def test_release_held_sends_deliveries_held_for_a_destination_enabled_again(ports, tmp_path):
    ports.reconfigure(config({"id": "all", "destinations": ["off"]},
                             destinations=[{"id": "off", "type": "filesystem", "path": "off", "enabled": False}]))
    push("match", *gcs_notification(ports, received(ports)))
    push("morph", ports.bus.on(TOPIC_PLANNED)[0].to_bytes())
    [held] = exceptions.list_exceptions(ports, "held")
    assert push("release_held", b"{}").status_code == 200
    assert ports.bus.on(TOPIC_DELIVER) == []  # still disabled: stays held
    ports.reconfigure(config({"id": "all", "destinations": ["off"]},
                             destinations=[{"id": "off", "type": "filesystem", "path": "off"}]))
    assert push("release_held", b"{}").status_code == 200
    [(topic, body)] = [(t, m) for t, m in ports.bus.sent if t == TOPIC_DELIVER]
    assert Delivery.model_validate_json(body).destination_id == "off"
    assert exceptions.list_exceptions(ports, "retried")[0]["id"] == held["id"]


def test_poll_runs_the_named_source_and_records_its_outcome(ports):
    ports.reconfigure({**config({"id": "all", "destinations": ["archive"]}), "sources": [
        {"id": "pacs", "type": "dicomweb_poller", "url": f"http://127.0.0.1:{free_port()}/dicom-web", "timeout_s": 2}]})
    assert push("poll", json.dumps({"source_id": "pacs"}).encode()).status_code == 200
    status = source_status(ports.docs, ["pacs"])["pacs"]
    assert status["runs"] == 1 and "Connection refused" in status["last_error"]


def test_ghc_ingest_ignores_a_deletion(ports):
    name = "projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb/studies/1.2/series/1.2.3/instances/1.2.3.4"
    assert push("ghc_ingest", name.encode(), {"action": "DeleteInstance", "storeName": name.split("/dicomWeb")[0]}
                ).status_code == 200
    assert list((Path(ports.blobs.root) / "ingest").rglob("*.dcm")) == []


def test_stow_stores_a_part_in_the_ingest_bucket(ports, monkeypatch):
    """The API keys are read through the ports' Secrets."""
    monkeypatch.setenv("AXIOM_TEST_STOW_KEYS", "# one per line\nkey-1\n")
    ports.reconfigure({**config({"id": "all", "destinations": ["archive"]}), "stow": {"api_keys": "env:AXIOM_TEST_STOW_KEYS"}})
    boundary = uuid.uuid4().hex
    body = (b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + CT.read_bytes()
            + b"\r\n--" + boundary.encode() + b"--\r\n")
    app = create_app(target="stow", source=MAIN, signature_type="http")
    answer = app.test_client().post("/dicomweb/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json", "X-API-Key": "key-1"})
    assert answer.status_code == 200, answer.data
    [event] = ports.events
    assert dcmread(ports.blobs.root / event.blob.bucket / event.blob.name).SOPInstanceUID == dcmread(CT).SOPInstanceUID
