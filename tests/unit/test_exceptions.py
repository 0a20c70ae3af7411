"""Exception records in the embedded runtime: an operator's retry and the release of
held deliveries publish as durably as an input does (fsynced before the record says
``retried``), and the message they publish is the one the record held; the API's
status shows the runtime's own."""

from __future__ import annotations

import pytest

from shared import exceptions
from shared.adapters.local_queue import LocalQueue
from shared.api.app import PREFIX
from shared.config import parse_config
from shared.http import create_app
from shared.messages import TOPIC_DELIVER, BlobRef, Delivery, IngestMetadata
from shared.runtime.local import EmbeddedRuntime
from tests.support.procs import api_key


@pytest.fixture
def runtime(tmp_path):
    config = parse_config({"listeners": [], "destinations": [
        {"id": "off", "type": "filesystem", "path": "off", "enabled": False}]})
    rt = EmbeddedRuntime(config, tmp_path / "data", http_port=None, poll_sources=False)
    yield rt
    rt.stop()


@pytest.fixture
def publishes(monkeypatch):
    """(topic, body, fsynced) of every publish on a local queue."""
    seen = []
    publish = LocalQueue.publish

    def recording(self, topic, message, *, sync=True):
        seen.append((topic, message, sync))
        return publish(self, topic, message, sync=sync)

    monkeypatch.setattr(LocalQueue, "publish", recording)
    return seen


_BLOB = BlobRef(bucket="ingest", name="2026/12/01/1.2.3-x.dcm")
DELIVERY = Delivery(sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1", destination_id="off", blob=_BLOB, sha256="0" * 64,
                    source=_BLOB, ingest=IngestMetadata(source_type="cstore"))


def test_an_operators_retry_is_fsynced_before_the_record_says_retried(runtime, publishes):
    record_id = exceptions.hold_delivery(runtime.ports, DELIVERY, "destination off is disabled", stage="route")
    app = create_app(runtime.ports, runtime.status, stow=False)
    answer = app.test_client().post(f"{PREFIX}/exceptions/{record_id}/retry",
                                    headers={"X-API-Key": api_key(runtime.docs, "operator")})
    assert answer.status_code == 200 and answer.json["status"] == "retried"
    assert [(topic, sync) for topic, _, sync in publishes] == [(TOPIC_DELIVER, True)]
    assert Delivery.from_bytes(publishes[0][1]) == DELIVERY
    assert runtime.queue.pending(TOPIC_DELIVER) == 1
    assert runtime.docs.list(exceptions.HELD_DELIVERIES) == {}


def test_released_held_deliveries_are_fsynced(runtime, publishes):
    record_id = exceptions.hold_delivery(runtime.ports, DELIVERY, "destination off is disabled", stage="morph")
    assert exceptions.release_held(runtime.ports) == []  # still disabled
    runtime.stores.config = lambda: parse_config({"listeners": [], "destinations": [
        {"id": "off", "type": "filesystem", "path": "off"}]})
    runtime.ports.config = runtime.stores.config
    assert exceptions.release_held(runtime.ports) == [record_id]
    assert [(topic, sync) for topic, _, sync in publishes] == [(TOPIC_DELIVER, True)]


def test_stage_workers_publish_through_the_handler_bus(runtime, publishes):
    """Inside a handler the ack that follows commits the publish to the same log, so
    those publishes skip their own fsync (shared.adapters.local_queue.from_handlers)."""
    runtime.stores.stage_ports.bus.publish(TOPIC_DELIVER, DELIVERY)
    assert [sync for _, _, sync in publishes] == [False]


def test_a_record_without_a_message_is_not_retryable(runtime):
    record_id = exceptions.record_exception(runtime.ports, stage="match", status="quarantined", reason="not DICOM")
    with pytest.raises(exceptions.NotRetryable, match="has no message to retry"):
        exceptions.retry_exception(runtime.ports, record_id)
    with pytest.raises(exceptions.NotRetryable, match="no exception record"):
        exceptions.retry_exception(runtime.ports, "missing")


def test_api_status_shows_the_embedded_runtimes_own_status(runtime):
    """``GET /api/v1/status`` of serve: the counters, and under ``runtime`` what only the
    embedded runtime knows (queues, deliveries in flight, listeners, free space, ...)."""
    exceptions.hold_delivery(runtime.ports, DELIVERY, "destination off is disabled", stage="route")
    runtime.queue.publish(TOPIC_DELIVER, DELIVERY)
    client = create_app(runtime.ports, runtime.status, stow=False).test_client()
    viewer = {"X-API-Key": api_key(runtime.docs, "viewer")}
    got = client.get(f"{PREFIX}/status", headers=viewer).json
    assert got["held_deliveries"] == 1 and got["destinations"]["off"]["held"] == 1
    own = got["runtime"]
    assert own["queue"][TOPIC_DELIVER] == 1 and own["exceptions"] == 1
    assert own["deliveries"] == {"delivered": 0, "sending": 0, "in_doubt": 0}
    assert own["listeners"] == {} and own["pipeline_processes"] == []
    assert own["gateway"]["free_bytes"] > 0 and own["gateway"]["listener_errors"] == {}
    assert own["retention"]["trash"] == 0 and own["sources"] == {}
    assert client.get(f"{PREFIX}/status").status_code == 401
