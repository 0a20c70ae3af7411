"""The GCP adapters against the real emulators: fake-gcs-server (GCS), the
Firestore emulator (documents, delivery ledger) and the Pub/Sub emulator (bus)."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydicom.data import get_testdata_file

from shared.config import AppConfig, parse_config
from shared.messages import BlobRef, IngestMetadata, ObjectFinalized
from shared.ports import Claim
from tests.support.gcp import PROJECT, record_object_patches, unique

# --- GCS ------------------------------------------------------------------------------


@pytest.fixture
def blobs(fake_gcs):
    from shared.adapters.gcs import GCSBlobStore

    store = GCSBlobStore(fake_gcs.client())
    store.bucket_a, store.bucket_b = unique("a-"), unique("b-")
    fake_gcs.create_buckets(store.bucket_a, store.bucket_b)
    return store


def test_gcs_put_read_metadata_roundtrip(blobs, tmp_path):
    src = get_testdata_file("CT_small.dcm")
    data = open(src, "rb").read()
    meta = IngestMetadata(source_type="cstore", source_id="main", calling_ae="MODALITY", sop_instance_uid="1.2.3",
                          sha256=hashlib.sha256(data).hexdigest())
    ref = blobs.put_file(blobs.bucket_a, "2024/01/01/1.2.3/x.dcm", src, meta.to_blob_metadata())
    assert ref.bucket == blobs.bucket_a and ref.name == "2024/01/01/1.2.3/x.dcm" and ref.generation
    assert blobs.exists(ref)
    with blobs.local_path(ref) as path:
        assert path.read_bytes() == data
        kept = path
    assert not kept.exists(), "the downloaded copy is removed after the block"
    got = blobs.metadata(ref)
    assert got == meta.to_blob_metadata()
    assert IngestMetadata.from_blob_metadata(got) == meta


def test_gcs_put_move_removes_local_file(blobs, tmp_path):
    src = tmp_path / "in.dcm"
    src.write_bytes(b"abc")
    ref = blobs.put_file(blobs.bucket_a, "moved", src, move=True)
    assert not src.exists()
    assert blobs.read_bytes(ref) == b"abc"


def test_gcs_copy_keeps_bytes_and_metadata_then_delete(blobs, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x00\x01" * 100_000)
    ref = blobs.put_file(blobs.bucket_a, "dir/obj", src, {"axiom-sop_instance_uid": "1.2.3"})
    copied = blobs.copy(ref, blobs.bucket_b, "dir/obj")
    assert copied.bucket == blobs.bucket_b and copied.generation
    assert blobs.read_bytes(copied) == src.read_bytes()
    assert blobs.metadata(copied) == {"axiom-sop_instance_uid": "1.2.3"}
    blobs.delete(ref)
    assert not blobs.exists(ref)
    blobs.delete(ref)  # idempotent
    assert blobs.exists(copied)
    assert blobs.list(blobs.bucket_a) == [] and blobs.list(blobs.bucket_b) == ["dir/obj"]


def test_gcs_missing_object(blobs):
    ref = BlobRef(bucket=blobs.bucket_a, name="nope")
    assert not blobs.exists(ref)
    assert blobs.metadata(ref) == {}
    with pytest.raises(FileNotFoundError):
        with blobs.local_path(ref):
            pass


def test_gcs_generation_is_respected(blobs, tmp_path):
    """A ref to a generation that was overwritten does not read the new bytes."""
    src = tmp_path / "v"
    src.write_bytes(b"one")
    first = blobs.put_file(blobs.bucket_a, "same", src)
    src.write_bytes(b"two")
    second = blobs.put_file(blobs.bucket_a, "same", src)
    assert first.generation != second.generation
    assert blobs.read_bytes(second) == b"two"
    assert blobs.exists(BlobRef(bucket=blobs.bucket_a, name="same"))
    assert not blobs.exists(first)


def test_gcs_hold_is_a_temporary_hold_patch_of_that_generation(fake_gcs, tmp_path):
    """set_hold sends objects.patch {"temporaryHold": true|false} for the referenced
    generation and the server accepts it. fake-gcs-server keeps no holds (it returns
    no ``temporaryHold`` and deletes a held object), so the flag itself is checked by
    the request; a missing object is no error."""
    from shared.adapters.gcs import GCSBlobStore

    client = fake_gcs.client()
    store, patches = GCSBlobStore(client), record_object_patches(client)
    bucket = unique("h-")
    fake_gcs.create_buckets(bucket)
    src = tmp_path / "in.dcm"
    src.write_bytes(b"held bytes")
    ref = store.put_file(bucket, "2026/01/01/x y.dcm", src)
    store.set_hold(ref, True)
    store.set_hold(ref, False)
    store.set_hold(BlobRef(bucket=bucket, name="gone.dcm", generation="1"), True)
    path = f"/storage/v1/b/{bucket}/o/2026%2F01%2F01%2Fx%20y.dcm"
    assert [(p, q.get("generation"), b, s) for p, q, b, s in patches] == [
        (path, ref.generation, {"temporaryHold": True}, 200),
        (path, ref.generation, {"temporaryHold": False}, 200),
        (f"/storage/v1/b/{bucket}/o/gone.dcm", "1", {"temporaryHold": True}, 404),
    ]
    # what the emulator does with it: nothing (and its filesystem backend gives the object a
    # new generation, which GCS does not). When it keeps holds, assert the flag here.
    assert client.bucket(bucket).get_blob("2026/01/01/x y.dcm").temporary_hold is None


# --- Firestore ---------------------------------------------------------------------------


@pytest.fixture
def docs(firestore_emulator):
    from shared.adapters.firestore import FirestoreDocumentStore

    return FirestoreDocumentStore(prefix=unique("t"))


@pytest.fixture
def ledger(docs):
    from shared.adapters.firestore import FirestoreDeliveryLedger

    return FirestoreDeliveryLedger(docs.client, prefix=docs.prefix)


def test_documents_get_set_list_delete(docs):
    assert docs.get("things", "a") is None
    assert docs.list("things") == {}
    docs.set("things", "b", {"n": 2, "nested": {"list": [1, "x", {"k": None}]}})
    docs.set("things", "a", {"n": 1})
    assert docs.get("things", "b") == {"n": 2, "nested": {"list": [1, "x", {"k": None}]}}
    assert docs.list("things") == {"a": {"n": 1}, "b": {"n": 2, "nested": {"list": [1, "x", {"k": None}]}}}
    docs.set("things", "a", {"n": 3})
    assert docs.get("things", "a") == {"n": 3}
    assert docs.count("things") == 2 and docs.count("other") == 0
    docs.delete("things", "a")
    docs.delete("things", "a")
    assert list(docs.list("things")) == ["b"] and docs.count("things") == 1


def test_documents_values_are_json_like_sqlite(docs):
    from datetime import datetime, timezone

    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    docs.set("things", "t", {"when": when})
    assert docs.get("things", "t") == {"when": str(when)}


def test_documents_create_if_absent(docs):
    assert docs.create("claims", "k", {"owner": "first"}) is True
    assert docs.create("claims", "k", {"owner": "second"}) is False
    assert docs.get("claims", "k") == {"owner": "first"}


def test_documents_create_races_have_one_winner(docs):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: docs.create("claims", "race", {"n": n}), range(8)))
    assert results.count(True) == 1


def test_documents_increment_adds_atomically_and_sets_fields(docs):
    """The status counters' update (shared/counters.py): concurrent increments are none lost."""
    docs.increment("counters", "destination:pacs", {"failed": 1}, {"last_error": "refused"})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: docs.increment("counters", "destination:pacs", {"delivered": 1, "held": -1}),
                      range(40)))
    assert docs.get("counters", "destination:pacs") == {"failed": 1, "last_error": "refused", "delivered": 40,
                                                        "held": -40}


def test_documents_increment_many_adds_to_every_document_in_one_write(docs):
    """A spanner query's counters (the spanner's and each source's) in one batch commit."""
    docs.increment("counters", "spanner_source:b", {"queries": 5})

    def one_query(_):
        docs.increment_many("counters", {"spanner:all": ({"queries": 1}, None),
                                         "spanner_source:a": ({"queries": 1, "ms": 7}, None),
                                         "spanner_source:b": ({"queries": 1, "errors": 1}, {"last_error": "timeout"})})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one_query, range(12)))
    assert docs.get("counters", "spanner:all") == {"queries": 12}
    assert docs.get("counters", "spanner_source:a") == {"queries": 12, "ms": 84}
    assert docs.get("counters", "spanner_source:b") == {"queries": 17, "errors": 12, "last_error": "timeout"}


def test_config_roundtrip_through_firestore(docs):
    from shared.runtime.configcache import load_config
    from shared.runtime.gcp import load_config as store_config

    config = parse_config({
        "destinations": [{"id": "pacs", "type": "cstore", "ae_title": "PACS", "host": "10.0.0.1", "port": 104}],
        "rulesets": [{"id": "rs", "rules": [{"id": "r", "when": {"all": [{"tag": "Modality", "value": "CT"},
                                                                          {"not": {"tag": "(0008,0080)", "op": "exists"}}]},
                                            "actions": [{"action": "set", "tag": "InstitutionName", "value": "X"}],
                                            "destinations": ["pacs"]}]}],
        "settings": {"ingest_bucket": "in"},
    })
    store_config(config, docs)
    assert load_config(docs) == config
    store_config(AppConfig(), docs)  # replacing drops documents no longer in the config
    assert load_config(docs) == AppConfig()
    assert docs.list("destinations") == {}


def test_ledger_claim_states(ledger):
    key = unique("k")
    info = {"destination_id": "pacs", "sop_instance_uid": "1.2.3"}
    assert ledger.claim(key, 60, info) is Claim.CLAIMED
    assert ledger.state(key)["state"] == "sending"
    assert ledger.claim(key, 60, info) is Claim.BUSY, "a live lease keeps others out"
    ledger.mark_delivered(key, {**info, "where": "PACS@host:104"})
    assert ledger.claim(key, 60, info) is Claim.DELIVERED
    ledger.release(key)  # releasing a delivered key changes nothing
    assert ledger.claim(key, 60, info) is Claim.DELIVERED
    assert ledger.state(key)["info"]["where"] == "PACS@host:104"


def test_ledger_release_forgets_a_claim_not_in_doubt(ledger):
    key = unique("k")
    assert ledger.claim(key, 60, {}) is Claim.CLAIMED
    assert ledger.state(key)["in_doubt"] is False
    ledger.release(key)
    assert ledger.state(key) is None
    assert ledger.claim(key, 60, {}) is Claim.CLAIMED


def test_ledger_expired_lease_is_taken_over_in_doubt(ledger):
    key = unique("k")
    assert ledger.claim(key, 0.5, {"try": 1}) is Claim.CLAIMED
    time.sleep(0.7)  # the sender died holding the claim
    assert ledger.claim(key, 60, {"try": 2}) is Claim.CLAIMED, "an expired lease can be taken over"
    assert ledger.state(key)["in_doubt"] is True, "the peer may already have it"
    ledger.release(key)  # a failed send keeps the doubt, with the lease expired
    row = ledger.state(key)
    assert row["state"] == "sending" and row["in_doubt"] is True and row["lease_until"] == 0
    assert ledger.claim(key, 60, {"try": 3}) is Claim.CLAIMED
    ledger.mark_delivered(key, {"where": "x"})
    row = ledger.state(key)
    assert (row["state"], row["in_doubt"], row["info"]) == ("delivered", True, {"where": "x"})
    assert ledger.counts() == {"delivered": 1, "in_doubt": 1}


def test_ledger_expire_all_leases(ledger):
    keys = [unique("k") for _ in range(3)]
    for key in keys:
        assert ledger.claim(key, 600, {}) is Claim.CLAIMED
    ledger.mark_delivered(keys[0], {})
    assert ledger.expire_all_leases() == 2
    assert ledger.claim(keys[1], 60, {}) is Claim.CLAIMED
    assert ledger.claim(keys[0], 60, {}) is Claim.DELIVERED
    assert ledger.counts() == {"delivered": 1, "sending": 2, "in_doubt": 1}


def test_ledger_concurrent_claims_one_winner(ledger):
    key = unique("k")
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: ledger.claim(key, 60, {}), range(6)))
    assert results.count(Claim.CLAIMED) == 1
    assert results.count(Claim.BUSY) == 5


# --- Pub/Sub --------------------------------------------------------------------------


def test_pubsub_bus_publishes_to_prefixed_topic(pubsub_admin):
    from shared.adapters.pubsub import PubSubBus

    prefix = unique("p") + "-"
    pubsub_admin.create_topic(f"{prefix}planned")
    pubsub_admin.create_pull_subscription(f"{prefix}tap", f"{prefix}planned")
    bus = PubSubBus(PROJECT, prefix=prefix)
    assert bus.topic_path("planned") == f"projects/{PROJECT}/topics/{prefix}planned"
    event = ObjectFinalized(blob=BlobRef(bucket="in", name="x.dcm", generation="7"), metadata={"axiom-a": "b"})
    message_id = bus.publish("planned", event)
    assert message_id
    got = pubsub_admin.pull_all(f"{prefix}tap", settle_s=0.5)
    assert len(got) == 1
    assert ObjectFinalized.from_bytes(got[0].message.data) == event
    assert dict(got[0].message.attributes) == {"axiom-topic": "planned", "axiom-type": "ObjectFinalized"}


def test_pubsub_bus_missing_topic_raises(pubsub_emulator):
    from google.api_core.exceptions import NotFound

    from shared.adapters.pubsub import PubSubBus

    bus = PubSubBus(PROJECT, prefix=unique("none") + "-", timeout_s=20)
    with pytest.raises(NotFound):
        bus.publish("planned", ObjectFinalized(blob=BlobRef(bucket="in", name="x")))


# --- Healthcare notifications claimed in Firestore (issue 10.14) -----------------------


@pytest.fixture(scope="module")
def orthanc_store(tmp_path_factory):
    """Orthanc's DICOMweb standing in for a Healthcare API DICOM store."""
    from tests.support.orthanc import Orthanc

    with Orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.mark.dcmtk
def test_concurrent_notification_deliveries_ingest_once_on_firestore(docs, blobs, orthanc_store, tmp_path):
    """The GCP runtime's pair (Firestore claims, GCS ingest bucket): two deliveries of
    each notification at the same moment put one object in the ingest bucket."""
    from shared.inputs.healthcare_notify import NOTIFIED
    from shared.inputs.ingest import Ingestor
    from tests.integration.test_healthcare_notify import assert_each_ingested_once, resource_name
    from tests.integration.test_pollers import make_study, upload

    files = upload(orthanc_store, make_study(tmp_path / "n", "AXF-GHC-FS", "20240405", ct=4))
    assert_each_ingested_once([resource_name(p) for p in files.values()],
                              {"action": "StoreInstances", "versionId": "3"},
                              ingestor=Ingestor(blobs, blobs.bucket_a), dicomweb_base=orthanc_store.dicomweb,
                              headers={}, docs=docs, source_id="ghc", tmp_dir=tmp_path)
    stored = [blobs.metadata(BlobRef(bucket=blobs.bucket_a, name=n))["axiom-sop_instance_uid"]
              for n in blobs.list(blobs.bucket_a)]
    assert sorted(stored) == sorted(files), "one object per instance"
    assert {d["state"] for d in docs.list(NOTIFIED).values()} == {"ingested"}
