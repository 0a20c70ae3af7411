"""The stages in-process on the local adapters: what each publishes, records and writes."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from shared import exceptions, stages
from shared.adapters.files import drop_cached
from shared.adapters.local_blobs import LocalBlobStore
from shared.adapters.sqlite import SQLiteDatabase, SQLiteDeliveryLedger
from shared.api.app import PREFIX
from shared.dicom.io import content_digest
from shared.errors import RetryLater
from shared.messages import Delivery, IngestMetadata, ObjectFinalized, Plan
from tests.support.procs import api_key, free_port
from tests.support.stageports import config, ingest, run_all

CT = Path(get_testdata_file("CT_small.dcm"))


def test_match_morph_route_with_association_condition(make_ports, tmp_path):
    ports = make_ports(config(
        {"id": "from-mod2", "when": {"association": "calling_ae", "value": "MOD2"}, "destinations": []},
        {"id": "ct", "when": {"all": [{"tag": "Modality", "value": "CT"}, {"tag": "PatientID", "op": "exists"}]},
         "actions": [{"action": "set", "tag": "StationName", "value": "ROUTED"},
                     {"action": "delete", "tag": "OtherPatientIDs"}],
         "destinations": ["archive"]},
    ))
    plan, results = run_all(ports, ingest(ports, CT, calling_ae="MOD1"))
    assert [r.rule_id for r in plan.matched] == ["ct"]
    assert results == ["delivered"]
    out = next((tmp_path / "out").rglob("*.dcm"))
    src, got = dcmread(CT), dcmread(out)
    assert got.StationName == "ROUTED" and "OtherPatientIDs" not in got
    assert got.PixelData == src.PixelData and got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID


def test_first_match_stops_at_the_first_matching_rule(make_ports):
    ports = make_ports(config(
        {"id": "a", "when": {"tag": "Modality", "value": "CT"}, "destinations": ["archive"]},
        {"id": "b", "destinations": ["archive"]},
    ))
    plan = stages.match(ports, ingest(ports, CT))
    assert [r.rule_id for r in plan.matched] == ["a"]


def test_no_match_without_default_route_is_held_not_dropped(make_ports):
    ports = make_ports(config({"id": "mr", "when": {"tag": "Modality", "value": "MR"}, "destinations": ["archive"]}))
    plan = stages.match(ports, ingest(ports, CT))
    assert plan.destination_ids == [] and ports.bus.on(stages.TOPIC_PLANNED) == []
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert record["status"] == "held" and record["sop_instance_uid"] == plan.sop_instance_uid
    assert record["retry"]["topic"] == stages.TOPIC_INGEST


def _released_event(ports):
    topic, body = ports.bus.sent[-1]
    assert topic == stages.TOPIC_INGEST
    return ObjectFinalized.from_bytes(body)


def test_released_held_instance_is_planned_again_under_the_config_of_now(make_ports, tmp_path):
    rule = {"id": "mr", "when": {"tag": "Modality", "value": "MR"}, "destinations": ["archive"]}
    ports = make_ports(config(rule))
    stages.match(ports, ingest(ports, CT))
    [(held_id, _)] = ports.docs.list(exceptions.EXCEPTIONS).items()

    # released while still nowhere to go: held again, with a record of its own
    assert exceptions.retry_exception(ports, held_id)["status"] == "retried"
    assert stages.match(ports, _released_event(ports)).destination_ids == []
    records = ports.docs.list(exceptions.EXCEPTIONS)
    [again_id] = [i for i, r in records.items() if r["status"] == "held"]
    assert again_id != held_id and records[held_id]["status"] == "retried"

    ports.reconfigure(config(rule, default={"destinations": ["archive"]}))
    exceptions.retry_exception(ports, again_id)
    plan, results = run_all(ports, _released_event(ports))
    assert plan.destination_ids == ["archive"] and results == ["delivered"]
    [out] = (tmp_path / "out").rglob("*.dcm")
    assert dcmread(out).SOPInstanceUID == plan.sop_instance_uid
    assert {r["status"] for r in ports.docs.list(exceptions.EXCEPTIONS).values()} == {"retried"}


def test_a_plan_held_before_replanning_existed_is_planned_again(make_ports, tmp_path):
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}))
    event = ingest(ports, CT)
    old_plan = Plan(blob=event.blob, ingest=IngestMetadata(), sop_instance_uid="1.2.3")
    record_id = exceptions.record_exception(ports, stage="match", status="held", reason="no rule matched",
                                        topic=stages.TOPIC_PLANNED, body=old_plan.model_dump_json())
    exceptions.retry_exception(ports, record_id)
    _, results = run_all(ports, _released_event(ports))
    assert results == ["delivered"]


def test_disabled_destination_holds_the_delivery_until_it_is_enabled(make_ports, tmp_path):
    from shared.dryrun import dry_run

    destinations = [{"id": "archive", "type": "filesystem", "path": "out"},
                    {"id": "off", "type": "filesystem", "path": "off", "enabled": False}]
    rules = {"id": "all", "destinations": ["archive", "off"],
             "actions": [{"action": "set", "tag": "StationName", "value": "X"}]}
    ports = make_ports(config(rules, destinations=destinations))
    report = dry_run(ports.config(), CT, IngestMetadata())
    assert report["held_destinations"] == {"off": "destination off is disabled"} and report["outcome"] == "route"

    plan = stages.match(ports, ingest(ports, CT))
    deliveries = stages.morph(ports, plan)
    assert [d.destination_id for d in deliveries] == ["archive"]
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert (record["status"], record["destination_id"], record["reason"]) == ("held", "off", "destination off is disabled")
    assert exceptions.release_held(ports) == []  # still disabled: stays held
    assert not (tmp_path / "off").exists()

    destinations[1]["enabled"] = True
    ports.reconfigure(config(rules, destinations=destinations))
    assert exceptions.release_held(ports) == [record["id"]]
    assert exceptions.release_held(ports) == []  # released once
    topic, body = ports.bus.sent[-1]
    assert topic == stages.TOPIC_DELIVER
    assert stages.route(ports, Delivery.from_bytes(body)) == "delivered"
    [out] = (tmp_path / "off").rglob("*.dcm")
    assert dcmread(out).StationName == "X"


def test_destination_disabled_after_morph_is_held_at_route(make_ports, tmp_path):
    destinations = [{"id": "archive", "type": "filesystem", "path": "out"}]
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}, destinations=destinations))
    [delivery] = stages.morph(ports, stages.match(ports, ingest(ports, CT)))
    ports.reconfigure(config({"id": "all", "destinations": []}, destinations=[{**destinations[0], "enabled": False}]))
    assert stages.route(ports, delivery) == "held"
    ports.reconfigure(config({"id": "all", "destinations": []},
                             destinations=[{"id": "other", "type": "filesystem", "path": "other"}]))
    assert stages.route(ports, delivery) == "held"
    reasons = sorted(r["reason"] for r in ports.docs.list(exceptions.EXCEPTIONS).values())
    assert reasons == ["destination archive is disabled", "destination archive is not configured"]
    assert not (tmp_path / "out").exists()


def test_no_match_goes_to_the_default_route(make_ports, tmp_path):
    ports = make_ports(config({"id": "mr", "when": {"tag": "Modality", "value": "MR"}, "destinations": ["archive"]},
                              default={"destinations": ["archive"]}))
    plan, results = run_all(ports, ingest(ports, CT))
    assert plan.matched == [] and results == ["delivered"]


def test_redelivered_delivery_is_acknowledged_not_sent_again(make_ports, tmp_path):
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}))
    _, results = run_all(ports, ingest(ports, CT))
    delivery = ports.bus.on(stages.TOPIC_DELIVER)[0]
    out = next((tmp_path / "out").rglob("*.dcm"))
    out.unlink()
    assert stages.route(ports, delivery) == "duplicate"
    assert not out.exists()


def test_unchanged_instance_is_delivered_from_the_ingest_object(make_ports):
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}))
    run_all(ports, ingest(ports, CT))
    delivery = ports.bus.on(stages.TOPIC_DELIVER)[0]
    assert delivery.blob.bucket == "ingest"
    assert delivery.sha256 == content_digest(CT.read_bytes())


def test_down_destination_retries_then_records_a_retryable_exception(make_ports):
    dest = {"id": "pacs", "type": "cstore", "ae_title": "NOPE", "host": "127.0.0.1", "port": free_port(),
            "timeout_s": 2, "retry": {"max_attempts": 3, "initial_backoff_s": 0.5, "max_backoff_s": 1}}
    ports = make_ports(config({"id": "all", "destinations": ["pacs"]}, destinations=[dest]))
    stages.match(ports, ingest(ports, CT))
    [delivery] = stages.morph(ports, ports.bus.on(stages.TOPIC_PLANNED)[0])
    delays = []
    for attempt in (1, 2):
        with pytest.raises(RetryLater) as err:
            stages.route(ports, delivery, attempt)
        delays.append(err.value.delay_s)
    assert delays == [0.5, 1.0]
    assert stages.route(ports, delivery, 3) == "failed"
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert record["destination_id"] == "pacs" and "after 3 attempt(s)" in record["reason"]
    assert "not established" in record["reason"]
    assert record["retry"] == {"topic": stages.TOPIC_DELIVER, "body": delivery.model_dump_json()}


def test_non_dicom_object_is_quarantined_with_reason(make_ports, tmp_path):
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello, not dicom" * 100)
    event = ingest(ports, junk)
    assert stages.match(ports, event) is None
    assert not ports.blobs.exists(event.blob)
    assert ports.blobs.list("quarantine") == [event.blob.name]
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert record["status"] == "quarantined" and "not a DICOM" in record["reason"]


def test_failed_delivery_can_be_retried_from_its_exception_record(make_ports):
    from shared.http import create_app

    dest = {"id": "pacs", "type": "cstore", "ae_title": "NOPE", "host": "127.0.0.1", "port": free_port(),
            "timeout_s": 2, "retry": {"max_attempts": 1}}
    ports = make_ports(config({"id": "all", "destinations": ["pacs"]}, destinations=[dest]))
    stages.match(ports, ingest(ports, CT))
    [delivery] = stages.morph(ports, ports.bus.on(stages.TOPIC_PLANNED)[0])
    assert stages.route(ports, delivery, 1) == "failed"
    [(record_id, record)] = ports.docs.list(exceptions.EXCEPTIONS).items()

    client = create_app(ports, stow=False).test_client()
    operator = {"X-API-Key": api_key(ports.docs, "operator")}
    listed = client.get(f"{PREFIX}/exceptions?status=failed", headers=operator).json["items"]
    assert [r["id"] for r in listed] == [record_id] and listed[0]["retryable"]
    answer = client.post(f"{PREFIX}/exceptions/{record_id}/retry", headers=operator)
    assert answer.status_code == 200 and answer.json["status"] == "retried" and answer.json["retries"] == 1
    retried = ports.bus.sent[-1]
    assert retried[0] == stages.TOPIC_DELIVER and Delivery.from_bytes(retried[1]) == delivery
    assert client.post(f"{PREFIX}/exceptions/nope/retry", headers=operator).status_code == 404


@pytest.mark.parametrize("bucket,name", [
    ("ingest", "../processed/x.dcm"), ("ingest", "a/../../x.dcm"), ("ingest", "/etc/passwd"),
    ("..", "x.dcm"), ("a/b", "x.dcm"), (".metadata.db", "x"), ("", "x.dcm"),
])
def test_local_blob_names_cannot_leave_their_bucket(tmp_path, bucket, name):
    blobs = LocalBlobStore(tmp_path / "blobs")
    src = tmp_path / "src.dcm"
    src.write_bytes(b"data")
    with pytest.raises(ValueError, match="escapes its bucket"):
        blobs.put_file(bucket, name, src)
    assert src.exists() and not any(p.is_file() and not p.name.startswith(".metadata.db")
                                    for p in (tmp_path / "blobs").rglob("*"))


def test_morphed_object_is_named_by_receive_time_and_content(make_ports):
    ports = make_ports(config({"id": "r", "actions": [{"action": "set", "tag": "StationName", "value": "X"}],
                               "destinations": ["archive"]}))
    event = ingest(ports, CT)
    plan = stages.match(ports, event)
    [delivery] = stages.morph(ports, plan)
    day = f"{plan.ingest.received_at:%Y/%m/%d}"
    assert delivery.blob.bucket == "processed"
    assert delivery.blob.name == f"{day}/{plan.sop_instance_uid}-{delivery.sha256}-{plan.ingest.received_at:%H%M%S%f}.dcm"
    with ports.blobs.local_path(delivery.blob) as path:
        assert dcmread(path).StationName == "X"
    assert stages.morph(ports, plan)[0].blob.name == delivery.blob.name  # a re-run writes the same object
    assert not list(Path(tempfile.gettempdir()).glob("axiom-morph-*"))


def _resident_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


@pytest.mark.skipif(shutil.which("fincore") is None, reason="fincore (util-linux) not installed")
def test_objects_read_for_the_last_time_leave_the_page_cache_not_the_disk(make_ports, tmp_path):
    probe = tmp_path / "probe"
    with open(probe, "wb") as fh:
        fh.write(b"x" * 65536)
        os.fsync(fh.fileno())
    drop_cached(probe)
    if _resident_bytes(probe):
        pytest.skip("this filesystem keeps pages that posix_fadvise(DONTNEED) asks to drop (tmpfs?)")
    ports = make_ports(config({"id": "r", "actions": [{"action": "set", "tag": "StationName", "value": "X"}],
                               "destinations": ["archive"]}))
    event = ingest(ports, CT)
    plan = stages.match(ports, event)
    with ports.blobs.local_path(event.blob) as received:
        assert _resident_bytes(received) > 0  # match read it: cached
        received_bytes = received.read_bytes()
    [delivery] = stages.morph(ports, plan)
    with ports.blobs.local_path(delivery.blob) as morphed:
        assert _resident_bytes(received) == 0  # morph was its last reader
        assert _resident_bytes(morphed) > 0  # route reads it next
    assert stages.route(ports, delivery) == "delivered"
    with ports.blobs.local_path(delivery.blob) as morphed:
        assert _resident_bytes(morphed) == 0
        assert dcmread(morphed).StationName == "X"
        assert received.read_bytes() == received_bytes  # on disk, unchanged


def test_morph_takes_matchs_parse_once_and_writes_what_a_fresh_read_writes(make_ports):
    ports = make_ports(config({"id": "r", "actions": [{"action": "set", "tag": "StationName", "value": "X"},
                                                      {"action": "delete", "tag": "OtherPatientIDs"}],
                               "destinations": ["archive"]}))
    plan = stages.match(ports, ingest(ports, CT))
    assert stages.PARSED.take(plan.blob) is not None  # match left its parse for morph...
    plan = stages.match(ports, ingest(ports, CT))
    [from_handoff] = stages.morph(ports, plan)
    assert stages.PARSED.take(plan.blob) is None  # ...which took it (a dataset is changed only once)
    [from_disk] = stages.morph(ports, plan)  # a redelivered plan reads the object again
    assert from_handoff.sha256 == from_disk.sha256 and from_handoff.blob.name == from_disk.blob.name


def test_parsed_instances_keeps_only_the_newest():
    from shared.messages import BlobRef

    parsed = stages.ParsedInstances(max_bytes=20)
    refs = [BlobRef(bucket="ingest", name=f"{n}.dcm", generation="1") for n in range(4)]
    for ref in refs[:3]:
        parsed.put(ref, b"x" * 10, None)
    assert parsed.take(refs[0]) is None  # evicted: 30 bytes > 20
    assert parsed.take(refs[2]) == (b"x" * 10, None) and parsed.take(refs[2]) is None
    parsed.put(refs[3], b"x" * 21, None)  # bigger than the whole budget: not kept
    assert parsed.take(refs[3]) is None and parsed.take(refs[1]) == (b"x" * 10, None)


def test_local_blob_metadata_is_kept_replaced_and_dropped_with_the_object(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    src = tmp_path / "src.dcm"
    src.write_bytes(b"data")
    ref = blobs.put_file("ingest", "a/b.dcm", src, {"axiom-calling_ae": "CT1"})
    assert blobs.metadata(ref) == {"axiom-calling_ae": "CT1"}
    copied = blobs.copy(ref, "quarantine", "a/b.dcm")
    # another process's store on the same directory (the pipeline processes) sees it too
    assert LocalBlobStore(tmp_path / "blobs").metadata(copied) == {"axiom-calling_ae": "CT1"}
    ref = blobs.put_file("ingest", "a/b.dcm", src)  # replaced without metadata: none left
    assert blobs.metadata(ref) == {}
    blobs.delete(copied)
    assert not blobs.exists(copied) and blobs.metadata(copied) == {} and blobs.list("quarantine") == []
    assert blobs.list("ingest") == ["a/b.dcm"]


RESEND_RULES = {"id": "all", "destinations": ["archive"],
                "actions": [{"action": "set", "tag": "StationName", "value": "X"}]}


def _resend(path: Path, tmp_path: Path, name: str, *, source_ae: str) -> Path:
    """The same data set written again by another hop: its own file meta."""
    ds = dcmread(path)
    ds.file_meta.SourceApplicationEntityTitle = source_ae
    ds.file_meta.ImplementationClassUID = "1.2.3.4.5." + str(len(source_ae))
    out = tmp_path / name
    ds.save_as(out)
    return out


@pytest.mark.parametrize("log_original_attributes", [True, False])
def test_resend_of_the_same_data_set_is_a_duplicate_not_a_conflict(make_ports, tmp_path, log_original_attributes):
    ports = make_ports({**config(RESEND_RULES),
                        "settings": {"log_original_attributes": log_original_attributes}})
    _, first = run_all(ports, ingest(ports, _resend(CT, tmp_path, "a.dcm", source_ae="MOD1")))
    [out] = (tmp_path / "out").rglob("*.dcm")
    delivered = out.read_bytes()
    _, again = run_all(ports, ingest(ports, _resend(CT, tmp_path, "b.dcm", source_ae="STOWCLIENT")))
    assert first == ["delivered"] and again == ["duplicate"]
    deliveries = ports.bus.on(stages.TOPIC_DELIVER)
    assert deliveries[0].sha256 == deliveries[1].sha256 and deliveries[0].blob != deliveries[1].blob
    assert deliveries[1].original_attributes_added is log_original_attributes
    # with the ledger forgotten the destination itself recognizes its copy
    ports.ledger = SQLiteDeliveryLedger(SQLiteDatabase(tmp_path / "other-ledger.db"))
    assert stages.route(ports, deliveries[1]) == "delivered"
    assert out.read_bytes() == delivered
    assert ports.docs.list(exceptions.EXCEPTIONS) == {}


def test_a_changed_data_set_under_the_same_uid_is_a_conflict(make_ports, tmp_path):
    ports = make_ports({**config(RESEND_RULES), "settings": {"log_original_attributes": True}})
    run_all(ports, ingest(ports, CT))
    [out] = (tmp_path / "out").rglob("*.dcm")
    delivered = out.read_bytes()
    changed = dcmread(CT)
    changed.SeriesDescription = "another series description"
    changed.save_as(tmp_path / "changed.dcm")
    _, results = run_all(ports, ingest(ports, tmp_path / "changed.dcm"))
    assert results == ["failed"] and out.read_bytes() == delivered
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert record["status"] == "refused" and "different data set" in record["reason"]


def test_an_ingest_object_gone_before_planning_is_recorded_a_quarantined_one_is_not(make_ports, tmp_path):
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom" * 50)
    quarantined = ingest(ports, junk)
    stages.match(ports, quarantined)
    assert stages.match(ports, quarantined) is None  # the notification again: nothing new
    gone = ingest(ports, CT)
    ports.blobs.delete(gone.blob)
    assert stages.match(ports, gone) is None
    records = sorted((r["status"], r["blob"]) for r in ports.docs.list(exceptions.EXCEPTIONS).values())
    assert records == sorted([("quarantined", str(quarantined.blob)), ("failed", str(gone.blob))])


# --- bad input and hostile values: quarantined or refused at first sight -------------------------


def _only_record(ports) -> dict:
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    return record


@pytest.mark.parametrize("build, reason", [
    ("unknown_vr_instance", "element (7019,1080) cannot be decoded as VR OB_OW (PS3.5 6.2; NotImplementedError)"),
    ("file_meta_in_dataset_instance", "the data set holds file meta elements ((0002,0016)), which belong in the "
                                      "file meta information only (PS3.10 7.1)"),
    ("non_string_sop_class_instance", "SOPClassUID is encoded with the VR US, not UI (PS3.6)"),
])
def test_input_pydicom_cannot_handle_is_quarantined_by_match(make_ports, tmp_path, build, reason):
    from tests.support import badvalues

    # the rule reads the private element, as a rule on any element would
    rule = {"id": "all", "when": {"not": {"tag": badvalues.UNKNOWN_VR_TAG, "value": "x"}},
            "actions": [{"action": "set", "tag": "StationName", "value": "ROUTED"}], "destinations": ["archive"]}
    ports = make_ports(config(rule))
    event = ingest(ports, getattr(badvalues, build)(tmp_path / "bad.dcm"))
    assert stages.match(ports, event) is None
    record = _only_record(ports)
    assert (record["stage"], record["status"], record["reason"]) == ("match", "quarantined", reason)
    assert ports.blobs.list("quarantine") == [event.blob.name] and ports.blobs.list("ingest") == []


def test_a_value_only_morph_reads_is_quarantined_by_morph(make_ports, tmp_path):
    from tests.support.badvalues import UNKNOWN_VR_TAG, unknown_vr_instance

    rule = {"id": "all", "actions": [{"action": "suffix", "tag": UNKNOWN_VR_TAG, "value": "x"}],
            "destinations": ["archive"]}
    ports = make_ports(config(rule))
    event = ingest(ports, unknown_vr_instance(tmp_path / "bad.dcm"))
    plan = stages.match(ports, event)
    assert stages.morph(ports, plan) == []
    record = _only_record(ports)
    assert (record["stage"], record["status"]) == ("morph", "quarantined")
    assert record["reason"] == "element (7019,1080) cannot be decoded as VR OB_OW (PS3.5 6.2; NotImplementedError)"
    assert ports.blobs.list("ingest") == [] and ports.blobs.list("processed") == []


@pytest.mark.parametrize("patient_id, reason", [
    ("..", "the name template cannot name this instance safely: PatientID is '.' or '..' (the destination folder "
           "or the one above it)"),
    ("CANARY7Q3" * 600, "the name template cannot name this instance safely: PatientID is 5400 bytes long, over "
                        "the file name limit of 255"),
])
def test_an_unsafe_name_is_refused_on_the_first_attempt(make_ports, tmp_path, patient_id, reason):
    from tests.support.badvalues import ct, encoded

    dest = {"id": "archive", "type": "filesystem", "path": "out", "name_template": "{PatientID}/{SOPInstanceUID}.dcm"}
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}, destinations=[dest]))
    source = tmp_path / "hostile.dcm"
    source.write_bytes(encoded(ct(PatientID=patient_id)))
    plan, results = run_all(ports, ingest(ports, source))
    assert results == ["failed"]
    record = _only_record(ports)
    assert (record["stage"], record["status"], record["reason"]) == ("route", "refused", reason)
    assert record["retry"]["topic"] == stages.TOPIC_DELIVER  # retried once the template is fixed
    # '..' would have put it in tmp_path itself
    assert not (tmp_path / "out").exists() and not (tmp_path / f"{plan.sop_instance_uid}.dcm").exists()
