"""The bookkeeping of object holds (shared/holds.py) over the embedded runtime's real
stores: which objects carry a hold while exception records are opened, retried,
settled and archived. The local blob store's own hold does nothing (its sweeper reads
the records), so the test's blob store keeps the held set the way GCS keeps its
``temporaryHold`` flags."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared import exceptions, holds, stages
from shared.config import parse_config
from shared.messages import BlobRef, Delivery, IngestMetadata
from shared.runtime.local import EmbeddedRuntime
from tests.support.dicomgen import make_ct_study


class HoldingBlobs:
    """The runtime's blob store, keeping each object's hold flag as GCS does."""

    def __init__(self, inner):
        self.inner = inner
        self.held: set[BlobRef] = set()
        self.changes = 0

    def set_hold(self, ref: BlobRef, held: bool) -> None:
        self.changes += 1
        (self.held.add if held else self.held.discard)(ref)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _config(enabled: bool):
    return parse_config({"listeners": [], "destinations": [
        {"id": "a", "type": "filesystem", "path": "out-a", "enabled": enabled},
        {"id": "b", "type": "filesystem", "path": "out-b", "enabled": enabled}]})


@pytest.fixture
def runtime(tmp_path):
    rt = EmbeddedRuntime(_config(False), tmp_path / "data", http_port=None, poll_sources=False)
    yield rt
    rt.stop()


@pytest.fixture
def ports(runtime):
    config = {"now": _config(False)}
    return replace(runtime.ports, blobs=HoldingBlobs(runtime.ports.blobs), config=lambda: config["now"]), config


def _instance(ports, tmp_path) -> tuple[BlobRef, BlobRef]:
    """A received object and its processed copy, as morph leaves them."""
    src = make_ct_study(tmp_path / "study", 1, rows=8, columns=8)[0]
    received = ports.blobs.put_file("processed", "2026/01/01/received.dcm", src)
    processed = ports.blobs.put_file("processed", "2026/01/01/processed.dcm", src)
    return received, processed


def received_bytes(ports, ref: BlobRef) -> bytes:
    with ports.blobs.local_path(ref) as path:
        return path.read_bytes()


def _delivery(received: BlobRef, processed: BlobRef, destination_id: str) -> Delivery:
    return Delivery(sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1", destination_id=destination_id, blob=processed,
                    sha256="0" * 64, source=received, ingest=IngestMetadata(source_type="cstore"))


def test_two_records_on_one_object_keep_its_hold_until_both_are_archived(ports, tmp_path):
    ports, _ = ports
    received, processed = _instance(ports, tmp_path)
    first = exceptions.hold_delivery(ports, _delivery(received, processed, "a"), "a is disabled", stage="morph")
    assert ports.blobs.held == {received, processed}
    second = exceptions.hold_delivery(ports, _delivery(received, processed, "b"), "b is disabled", stage="morph")
    assert set(holds.pins_of(ports, received)) == {first, second}

    exceptions.archive_exception(ports, first)
    assert ports.blobs.held == {received, processed}, "the second record still needs both objects"
    assert set(holds.pins_of(ports, processed)) == {second}
    exceptions.archive_exception(ports, second)
    assert ports.blobs.held == set()
    assert ports.docs.list(holds.OBJECT_HOLDS) == {}


def test_a_retried_record_keeps_its_hold_until_its_delivery_arrives(ports, runtime, tmp_path):
    ports, config = ports
    received, processed = _instance(ports, tmp_path)
    delivery = _delivery(received, processed, "a")
    record_id = exceptions.hold_delivery(ports, delivery, "a is disabled", stage="morph")
    config["now"] = _config(True)
    assert exceptions.release_held(ports) == [record_id]
    assert ports.blobs.held == {received, processed}, "in flight again: kept until it settles"

    assert stages.route(ports, delivery) == "delivered"
    assert ports.blobs.held == set()
    assert ports.docs.list(holds.OBJECT_HOLDS) == {}
    assert [p.read_bytes() for p in (runtime.data_dir / "out-a").rglob("*") if p.is_file()] == [received_bytes(ports, processed)]


def test_a_retry_that_is_held_again_moves_the_hold_to_the_new_record(ports, tmp_path):
    ports, config = ports
    received, processed = _instance(ports, tmp_path)
    delivery = _delivery(received, processed, "a")
    first = exceptions.hold_delivery(ports, delivery, "a is disabled", stage="morph")
    exceptions.retry_exception(ports, first)  # an operator's retry while still disabled
    assert stages.route(ports, delivery) == "held"
    (second,) = [r["id"] for r in exceptions.list_exceptions(ports, "held")]
    assert set(holds.pins_of(ports, received)) == {second}, "the first record settled into the second"
    assert ports.blobs.held == {received, processed}

    # a delivery to another destination settles nothing of destination a's record
    holds.settle(ports, received, "b")
    assert ports.blobs.held == {received, processed}
    exceptions.archive_exception(ports, second)
    assert ports.blobs.held == set()


def test_other_destinations_deliveries_do_not_settle_a_retried_record(ports, tmp_path):
    ports, config = ports
    received, processed = _instance(ports, tmp_path)
    record_id = exceptions.hold_delivery(ports, _delivery(received, processed, "a"), "a is disabled", stage="morph")
    exceptions.retry_exception(ports, record_id)
    config["now"] = _config(True)
    assert stages.route(ports, _delivery(received, processed, "b")) == "delivered"
    assert ports.blobs.held == {received, processed}
    assert stages.route(ports, _delivery(received, processed, "a")) == "delivered"
    assert ports.blobs.held == set()


def test_a_failed_publish_leaves_the_record_unsettled(ports, tmp_path, monkeypatch):
    ports, config = ports
    received, processed = _instance(ports, tmp_path)
    record_id = exceptions.hold_delivery(ports, _delivery(received, processed, "a"), "a is disabled", stage="morph")

    class Down:
        def publish(self, topic, message):
            raise OSError("bus down")

    with pytest.raises(OSError):
        exceptions.retry_exception(replace(ports, bus=Down()), record_id)
    assert holds.pins_of(ports, received)[record_id]["retried"] is False
    config["now"] = _config(True)
    assert stages.route(ports, _delivery(received, processed, "a")) == "delivered"
    assert ports.blobs.held == {received, processed}, "the record is still held: its objects stay"


def test_quarantined_records_hold_nothing(ports, tmp_path):
    ports, _ = ports
    received, _ = _instance(ports, tmp_path)
    exceptions.record_exception(ports, stage="match", status="quarantined", reason="not DICOM", blob=received,
                                quarantined_as=BlobRef(bucket="quarantine", name=received.name))
    assert ports.blobs.held == set() and ports.blobs.changes == 0
    assert ports.docs.list(holds.OBJECT_HOLDS) == {}


def test_a_release_raced_by_a_new_pin_holds_again(ports, tmp_path, monkeypatch):
    """Between taking the last pin off and clearing the hold, another record pins the
    object: the release reads the pins again and puts the hold back."""
    ports, _ = ports
    received, processed = _instance(ports, tmp_path)
    first = exceptions.hold_delivery(ports, _delivery(received, processed, "a"), "a is disabled", stage="morph")
    set_hold = ports.blobs.set_hold
    raced = []

    def racing(ref, held):
        set_hold(ref, held)
        if not held and not raced:
            raced.append(exceptions.hold_delivery(ports, _delivery(received, processed, "b"), "b", stage="morph"))

    monkeypatch.setattr(ports.blobs, "set_hold", racing)
    exceptions.archive_exception(ports, first)
    assert raced and ports.blobs.held == {received, processed}
