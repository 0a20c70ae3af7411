"""The GCP chain end to end, on real parts only:

    storescu --C-STORE--> python -m scp_gateway --upload--> fake-gcs-server (ingest bucket)
      --OBJECT_FINALIZE notification--> Pub/Sub emulator --push--> functions-framework: match
      --planned--> morph --deliver--> route --C-STORE--> dcmtk storescp

with the config read from the Firestore emulator and the delivery ledger there too.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from shared.config import parse_config
from shared.messages import TOPIC_DEAD_LETTER, TOPIC_INGEST, TOPICS, Delivery
from shared.runtime import gcp as gcp_runtime
from tests.support.databases import load_table, postgres_server  # noqa: F401 (fixture)
from tests.support.dicomgen import make_ct_study
from tests.support.gcp import (
    PROJECT,
    FakeGCS,
    FunctionProcess,
    GatewayProcess,
    PubSubAdmin,
    emulator_env,
    record_object_patches,
    stop_all,
    unique,
)
from tests.support.procs import StoreSCP, free_port, storescu, wait_for

INGEST, PROCESSED, QUARANTINE = "ingest", "processed", "quarantine"
INSTITUTION = "AXIOM GCP ROUTED"
# Distinct SOP Instance UIDs, several transfer syntaxes: Explicit VR LE (CT, MR),
# JPEG 2000, RLE Lossless, Implicit VR LE (RT Plan, no pixel data).
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtplan.dcm"]
STUDY_SIZE = 20
DEAD_PEER_STATION = "TO-DEAD-PEER"
CROSSWALK_STATION = "PSEUDONYMIZE"
MPI_ROWS = [("HOSP-A", "PAT-1", "R-0001"), ("HOSP-B", "PAT-1", "R-1001")]
MAX_DELIVERY_ATTEMPTS = 5  # Pub/Sub's minimum for a dead-letter policy
# storescu proposes uncompressed syntaxes (Explicit VR LE first) unless told otherwise
STORESCU_PROPOSAL = {
    ImplicitVRLittleEndian: ["-xi"],
    JPEG2000: ["-xw"],
    JPEG2000Lossless: ["-xv"],
    RLELossless: ["-xr"],
}


@dataclass
class Chain:
    prefix: str
    collections: str
    admin: PubSubAdmin
    gcs: FakeGCS
    scp: StoreSCP
    gateway: GatewayProcess
    functions: dict[str, FunctionProcess]
    docs: object
    work: Path
    listeners: list[dict]  # the gateway's, in every config a test loads: it follows the config
    sent: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> source file

    def diagnostics(self) -> str:
        parts = []
        for proc in [*self.functions.values(), self.gateway, self.gcs]:
            parts.append(f"--- {proc.name} (alive={proc.alive()}) ---\n{proc.log_text()[-2500:]}")
        parts.append(f"--- storescp ---\n{self.scp.log_path.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def wait(self, predicate, what: str, timeout: float = 90.0):
        try:
            return wait_for(predicate, timeout, interval=0.2, what=what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None

    def send(self, files: list[Path]) -> None:
        """storescu, one association per transfer syntax, each proposing the files' own
        syntax so that storescu sends them unconverted."""
        groups: dict[str, list[Path]] = {}
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            groups.setdefault(str(ds.file_meta.TransferSyntaxUID), []).append(path)
            self.sent[str(ds.SOPInstanceUID)] = path
        for syntax, paths in groups.items():
            result = storescu(self.gateway.port, paths, called_ae=self.gateway.ae_title, check=False, timeout=120,
                              extra=STORESCU_PROPOSAL.get(syntax, []))
            assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> file storescp wrote (files still being written are skipped)."""
        out = {}
        for path in self.scp.files():
            try:
                out[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
            except Exception:
                continue
        return out

    def exceptions(self) -> dict[str, dict]:
        return self.docs.list("exceptions")


@pytest.fixture(scope="module")
def chain(emulators, gcp_logs, tmp_path_factory, postgres_server):  # noqa: F811
    firestore, pubsub = emulators
    postgres_server.start()
    load_table(postgres_server, "research_ids", ["issuer", "mrn", "research_id"], MPI_ROWS)
    work = tmp_path_factory.mktemp("chain")
    prefix = unique("c") + "-"
    collections = unique("x") + "-"
    admin = PubSubAdmin(pubsub)
    with ExitStack() as stack:
        stack.callback(admin.close)
        for name in TOPICS:
            admin.create_topic(f"{prefix}{name}")
        # memory: fake-gcs-server's filesystem backend (v1.54) gives an object a new
        # generation on every metadata patch, a hold included (GCS bumps only the
        # metageneration), which would break the generation-pinned references of held objects
        gcs = FakeGCS(gcp_logs, work / "gcs", pubsub=pubsub, topic=f"{prefix}{TOPIC_INGEST}",
                      event_bucket=INGEST, backend="memory")
        stack.callback(gcs.stop)
        gcs.start()
        gcs.create_buckets(INGEST, PROCESSED, QUARANTINE)

        scp = StoreSCP(work / "storescp")
        stack.callback(scp.stop)
        scp.start()

        from shared.adapters.firestore import FirestoreDocumentStore

        docs = FirestoreDocumentStore(prefix=collections)
        down_port = free_port()  # nothing listens there
        gateway_port = free_port()
        listeners = [{"id": "main", "ae_title": "AXIOM", "host": "127.0.0.1", "port": gateway_port}]
        gcp_runtime.load_config(parse_config({
            "listeners": listeners,
            "settings": {"ingest_bucket": INGEST, "processed_bucket": PROCESSED, "quarantine_bucket": QUARANTINE},
            "destinations": [{"id": "pacs", "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1",
                              "port": scp.port, "retry": {"max_attempts": 3, "initial_backoff_s": 0.5}},
                             {"id": "down", "type": "cstore", "ae_title": "DOWN", "host": "127.0.0.1",
                              "port": down_port, "timeout_s": 2, "retry": {"max_attempts": 50}}],
            "crosswalk_sources": [{"id": "mpi", "type": "postgresql", "host": "127.0.0.1",
                                   "port": postgres_server.port, "database": postgres_server.database,
                                   "user": postgres_server.user, "password": "env:AXIOM_TEST_MPI_PASSWORD"}],
            "crosswalks": [{"id": "research", "source": "mpi", "table": "research_ids", "keys": ["issuer", "mrn"],
                            "value": "research_id", "on_miss": "fail"}],
            "rulesets": [{"id": "all", "rules": [
                {"id": "pseudonymize", "when": {"tag": "StationName", "value": CROSSWALK_STATION},
                 "actions": [{"action": "crosswalk", "tag": "PatientID", "table": "research",
                              "key_tags": ["IssuerOfPatientID", "PatientID"]}]},
                {"id": "stamp-and-send",
                 "actions": [{"action": "set", "tag": "InstitutionName", "value": INSTITUTION}],
                 "destinations": ["pacs"]},
                {"id": "also-to-a-dead-peer", "when": {"tag": "StationName", "value": DEAD_PEER_STATION},
                 "destinations": ["down"]},
            ]}],
        }), docs)

        env = {**emulator_env(firestore, pubsub, gcs), "AXIOM_TOPIC_PREFIX": prefix,
               "AXIOM_COLLECTION_PREFIX": collections, "AXIOM_BASE_DIR": str(work / "base"),
               "AXIOM_CONFIG_TTL_S": "2", "AXIOM_TEST_MPI_PASSWORD": postgres_server.password}
        functions = {t: FunctionProcess(gcp_logs, t, env) for t in ("match", "crosswalk", "morph", "route", "dead_letter")}
        stack.callback(stop_all, list(functions.values()))
        for fn in functions.values():
            fn.start()
        gateway = GatewayProcess(gcp_logs, {"GOOGLE_CLOUD_PROJECT": PROJECT, "STORAGE_EMULATOR_HOST": gcs.url,
                                            "FIRESTORE_EMULATOR_HOST": firestore.host,
                                            "AXIOM_COLLECTION_PREFIX": collections}, bucket=INGEST, port=gateway_port)
        stack.callback(gateway.stop)
        gateway.start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda fn: fn.wait_ready(), functions.values()))

        dlq = f"{prefix}{TOPIC_DEAD_LETTER}"
        for topic, target in (("ingest", "match"), ("crosswalk", "crosswalk"), ("planned", "morph"), ("deliver", "route")):
            admin.create_push_subscription(f"{prefix}{topic}-push", f"{prefix}{topic}", functions[target].url,
                                           dead_letter_topic=dlq, max_delivery_attempts=MAX_DELIVERY_ATTEMPTS)
        admin.create_push_subscription(f"{prefix}dead-letter-push", dlq, functions["dead_letter"].url)
        # A tap on the deliver topic: the test republishes one of these messages.
        admin.create_pull_subscription(f"{prefix}deliver-tap", f"{prefix}deliver")

        yield Chain(prefix=prefix, collections=collections, admin=admin, gcs=gcs, scp=scp, gateway=gateway,
                    functions=functions, docs=docs, work=work, listeners=listeners)


def _source_files(work: Path) -> list[Path]:
    files = []
    for name in PYDICOM_FILES:
        dest = work / "pydicom" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name), dest)
        files.append(dest)
    return files + make_ct_study(work / "study", STUDY_SIZE)


def test_instances_flow_through_the_chain_once_morphed_and_bit_exact(chain):
    files = _source_files(chain.work)
    started = time.monotonic()
    chain.send(files)
    expected = set(chain.sent)
    assert len(expected) == len(files)

    chain.wait(lambda: set(chain.received()) >= expected, f"{len(expected)} instances at storescp")
    elapsed = time.monotonic() - started
    time.sleep(2.0)  # any duplicate send would show up now
    assert chain.scp.received_count() == len(expected), "every instance arrives exactly once"
    received = chain.received()
    assert set(received) == expected

    for uid, src_path in chain.sent.items():
        src, out = dcmread(src_path), dcmread(received[uid])
        assert out.InstitutionName == INSTITUTION, uid
        assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID, uid
        assert out.SOPClassUID == src.SOPClassUID
        if "PixelData" in src:
            assert out["PixelData"].value == src["PixelData"].value, f"pixel data changed for {uid}"
        # everything else but the morphed tag is as sent
        for elem in src:
            # Data Set Trailing Padding (FFFC,FFFC) may be dropped (PS3.10 7.2)
            if elem.keyword not in ("InstitutionName", "PixelData", "DataSetTrailingPadding"):
                assert out[elem.tag].value == elem.value, f"{uid}: {elem.keyword or elem.tag} changed"
    # the morphed objects are content-addressed in the processed bucket; the ingest bucket keeps the originals
    processed = chain.gcs.client().list_blobs(PROCESSED)
    assert {b.name.rsplit("/", 1)[1].split("-")[0] for b in processed} == expected
    assert not [r for r in chain.exceptions().values()], chain.exceptions()
    print(f"{len(expected)} instances through the GCP chain in {elapsed:.1f}s")


def test_a_crosswalk_rule_goes_through_the_crosswalk_function_and_its_database(chain):
    """Plans with a crosswalk action take the crosswalk function's hop: the research
    ids come from PostgreSQL, keyed by issuer and patient ID; a patient the map lacks
    (on_miss: fail) becomes a failed record of the crosswalk stage, delivered nowhere."""
    sent = {}
    for n, (issuer, patient) in enumerate([("HOSP-A", "PAT-1"), ("HOSP-B", "PAT-1"), ("HOSP-A", "PAT-404")]):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StationName, ds.IssuerOfPatientID, ds.PatientID = CROSSWALK_STATION, issuer, patient
        path = chain.work / "crosswalk" / f"{n}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        sent[str(ds.SOPInstanceUID)] = path
    before = set(chain.exceptions())
    chain.send(list(sent.values()))
    mapped, missing = list(sent)[:2], list(sent)[2]
    chain.wait(lambda: set(mapped) <= set(chain.received()), "the crosswalked instances at storescp")
    received = chain.received()
    assert [dcmread(received[uid]).PatientID for uid in mapped] == ["R-0001", "R-1001"]
    assert all(dcmread(received[uid]).InstitutionName == INSTITUTION for uid in mapped)  # morph's other action
    new = lambda: [r for k, r in chain.exceptions().items() if k not in before]  # noqa: E731
    chain.wait(new, "a failed record for the patient the map lacks")
    [record] = new()
    assert (record["stage"], record["status"], record["sop_instance_uid"]) == ("crosswalk", "failed", missing)
    assert record["retry"]["topic"] == "crosswalk" and "PAT-404" not in record["reason"]
    assert missing not in chain.received()
    for uid in sent:  # the chain's bookkeeping: these are accounted for here
        chain.sent.pop(uid, None)


def test_redelivered_delivery_is_not_sent_twice(chain):
    if not chain.sent:
        chain.send(make_ct_study(chain.work / "one", 1))
        chain.wait(lambda: set(chain.received()) >= set(chain.sent), "the instance at storescp")
    tapped = chain.admin.pull_all(f"{chain.prefix}deliver-tap", settle_s=1.0)
    assert tapped, "route's input was published on the deliver topic"
    message = tapped[0].message
    delivery = Delivery.from_bytes(message.data)
    before = chain.scp.received_count()
    seen = f"route {delivery.sop_instance_uid} -> {delivery.destination_id}: duplicate"
    log_before = chain.functions["route"].log_text().count(seen)

    chain.admin.publish(f"{chain.prefix}deliver", message.data, **dict(message.attributes))

    chain.wait(lambda: chain.functions["route"].log_text().count(seen) > log_before,
               "route to acknowledge the redelivered message as a duplicate")
    time.sleep(1.0)
    assert chain.scp.received_count() == before, "the ledger stopped a second send"


def test_bad_objects_are_quarantined_with_a_reason_and_the_chain_keeps_going(chain):
    bucket = chain.gcs.client().bucket(INGEST)
    bucket.blob("drop/not-dicom.dcm").upload_from_string(b"this is a text file, not DICOM\n" * 40)
    good = make_ct_study(chain.work / "trunc-src", 1, rows=64, columns=64)[0]
    data = good.read_bytes()
    bucket.blob("drop/truncated.dcm").upload_from_string(data[: len(data) * 2 // 3])

    def quarantined():
        recs = [r for r in chain.exceptions().values() if r.get("status") == "quarantined"]
        return recs if len(recs) >= 2 else None

    records = chain.wait(quarantined, "two exception records")
    by_name = {r["blob"].split("#")[0].rsplit("/", 2)[-1]: r for r in records}
    assert set(by_name) == {"not-dicom.dcm", "truncated.dcm"}
    assert "not a DICOM" in by_name["not-dicom.dcm"]["reason"]
    assert "truncated" in by_name["truncated.dcm"]["reason"]
    for rec in records:
        assert rec["stage"] == "match"
        assert rec["quarantined_as"].startswith(f"gs://{QUARANTINE}/drop/")
    chain.wait(lambda: sorted(b.name for b in chain.gcs.client().list_blobs(QUARANTINE)) ==
               ["drop/not-dicom.dcm", "drop/truncated.dcm"], "the quarantined objects")
    # removed from ingest after the record is written (shared.exceptions.quarantine)
    chain.wait(lambda: not list(chain.gcs.client().list_blobs(INGEST, prefix="drop/")), "the ingest objects gone")
    quarantined_bytes = chain.gcs.client().bucket(QUARANTINE).blob("drop/truncated.dcm").download_as_bytes()
    assert quarantined_bytes == data[: len(data) * 2 // 3]

    # other notification types are acknowledged and ignored
    chain.admin.publish(f"{chain.prefix}ingest", b'{"bucket": "ingest", "name": "drop/gone.dcm"}',
                        eventType="OBJECT_DELETE", bucketId=INGEST, objectId="drop/gone.dcm", objectGeneration="1")
    chain.wait(lambda: "ignoring OBJECT_DELETE notification for gs://ingest/drop/gone.dcm"
               in chain.functions["match"].log_text(), "match to ignore the delete notification")

    # nothing crashed: every process is up and a later instance still flows
    assert all(fn.alive() for fn in chain.functions.values()) and chain.gateway.alive()
    later = make_ct_study(chain.work / "later", 1)
    before = chain.scp.received_count()
    chain.send(later)
    uid = str(dcmread(later[0], stop_before_pixels=True).SOPInstanceUID)
    chain.wait(lambda: uid in chain.received(), "the later instance at storescp")
    assert chain.scp.received_count() == before + 1
    assert len([r for r in chain.exceptions().values() if r.get("status") == "quarantined"]) == 2


def test_a_delivery_that_keeps_failing_is_dead_lettered_into_an_exception_record(chain):
    """route raises while the peer is down, so Pub/Sub redelivers; after the
    subscription's max delivery attempts the message goes to the dead-letter topic and
    the dead_letter function records a retryable exception. The other destination of
    the same instance is delivered meanwhile."""
    path = make_ct_study(chain.work / "dlq", 1, rows=32, columns=32)[0]
    ds = dcmread(path)
    ds.StationName = DEAD_PEER_STATION
    ds.save_as(path, enforce_file_format=True)
    uid = str(ds.SOPInstanceUID)
    chain.send([path])
    chain.wait(lambda: uid in chain.received(), "the instance at the live destination")

    def dead_lettered():
        recs = [r for r in chain.exceptions().values()
                if r.get("retry") and uid in (r["retry"].get("body") or "") and "gave up" in r.get("reason", "")]
        return recs or None

    (record,) = chain.wait(dead_lettered, "the dead-letter exception record", timeout=60)
    assert record["retry"]["topic"] == "deliver"
    delivery = Delivery.from_bytes(record["retry"]["body"])
    assert (delivery.sop_instance_uid, delivery.destination_id) == (uid, "down")
    assert record["reason"].startswith(f"gave up after {MAX_DELIVERY_ATTEMPTS} attempt(s): Pub/Sub dead-letter policy")
    assert chain.functions["route"].log_text().count("not established") >= 2, "route was retried"

    # the record holds the received and the processed object (the dead_letter function's
    # patches succeeded: it pins before it writes the record) until it is archived
    from shared import exceptions, holds
    from shared.adapters.gcs import GCSBlobStore
    from shared.ports import Ports

    objects = {delivery.source, delivery.blob}
    assert len(objects) == 2 and all(chain.gcs.client().bucket(o.bucket).get_blob(o.name) for o in objects)
    assert all(record["id"] in holds.pins_of(Ports(blobs=None, docs=chain.docs, ledger=None, bus=None, config=None,
                                                    senders=None, secrets=None), o) for o in objects)
    client = chain.gcs.client()
    ports = Ports(blobs=GCSBlobStore(client), docs=chain.docs, ledger=None, bus=None, config=None, senders=None,
                  secrets=None)
    patches = record_object_patches(client)
    exceptions.archive_exception(ports, record["id"])
    assert sorted((path, body, status) for path, _, body, status in patches) == sorted(
        (f"/storage/v1/b/{o.bucket}/o/{quote(o.name, safe='')}", {"temporaryHold": False}, 200) for o in objects)
    assert not any(holds.pins_of(ports, o) for o in objects)


def test_every_instance_answered_success_ends_somewhere_with_a_record(chain):
    """The invariant of tests/e2e/test_invariant.py on the GCP chain, with a smaller
    mix: the Pub/Sub dead-letter policy is what ends the down destination's retries."""
    from tests.e2e.test_bad_input import send_raw
    from tests.support.invariant import check, make_mix, mix_config, sop_uids

    config = mix_config({"ae_title": chain.scp.ae_title, "host": "127.0.0.1", "port": chain.scp.port},
                        down_port=free_port())
    config["settings"] = {"ingest_bucket": INGEST, "processed_bucket": PROCESSED, "quarantine_bucket": QUARANTINE}
    config["listeners"] = chain.listeners
    gcp_runtime.load_config(parse_config(config), chain.docs)
    time.sleep(3)  # the functions' config cache (AXIOM_CONFIG_TTL_S=2)
    mix = make_mix(chain.work / "mix", 14, seed=7)
    chain.send([s.path for s in mix.sent if not s.raw])
    for sent in mix.sent:
        if sent.raw:
            assert send_raw(chain.gateway.port, sent.path) == 0x0000

    def problems():
        delivered = {"archive": sop_uids((chain.work / "base" / "out").rglob("*.dcm")), "pacs": set(chain.received())}
        return check(mix, list(chain.exceptions().values()), delivered)

    try:
        wait_for(lambda: not problems(), 120, interval=1.0, what="every instance to end somewhere")
    except TimeoutError:
        pass
    assert problems() == []


def test_release_held_function_sends_what_a_destination_enabled_again_held(chain, monkeypatch):
    """The ``release_held`` entry point, called as Cloud Scheduler's Pub/Sub push calls
    it (a real-shaped CloudEvent through functions-framework's test client): deliveries
    held for a disabled destination go out through the running route function."""
    import base64

    from functions_framework import create_app

    from shared import exceptions, holds
    from tests.support.invariant import mix_config, sop_uids

    config = mix_config({"ae_title": chain.scp.ae_title, "host": "127.0.0.1", "port": chain.scp.port},
                        down_port=free_port(), off_path="released")
    config["settings"] = {"ingest_bucket": INGEST, "processed_bucket": PROCESSED, "quarantine_bucket": QUARANTINE}
    config["listeners"] = chain.listeners
    config["rulesets"][0]["rules"] = [{"id": "to-off", "destinations": ["off"]}]
    gcp_runtime.load_config(parse_config(config), chain.docs)
    time.sleep(3)  # the functions' config cache
    paths = make_ct_study(chain.work / "held", 2, rows=32, columns=32)
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    chain.send(paths)

    def held():
        return [r for r in chain.exceptions().values()
                if r.get("status") == "held" and r.get("sop_instance_uid") in uids and r.get("destination_id") == "off"]

    chain.wait(lambda: len(held()) == 2, "two held deliveries")
    held_ids = {r["id"] for r in held()}
    pinned = {record_id for doc in chain.docs.list(holds.OBJECT_HOLDS).values() for record_id in doc["pins"]}
    assert held_ids <= pinned, "each held record holds its objects"
    config["destinations"] = [{**d, "enabled": True} for d in config["destinations"]]
    gcp_runtime.load_config(parse_config(config), chain.docs)

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", chain.gcs.url)
    monkeypatch.setenv("AXIOM_TOPIC_PREFIX", chain.prefix)
    monkeypatch.setenv("AXIOM_COLLECTION_PREFIX", chain.collections)
    monkeypatch.setenv("AXIOM_CONFIG_TTL_S", "0")
    monkeypatch.setattr(gcp_runtime, "_ports", None)
    try:
        app = create_app(target="release_held", source=str(Path(__file__).parents[2] / "functions" / "main.py"),
                         signature_type="cloudevent")
        event = {"specversion": "1.0", "type": "google.cloud.pubsub.topic.v1.messagePublished",
                 "source": "//pubsub.googleapis.com/projects/p/topics/release",
                 "id": "release-1", "datacontenttype": "application/json",
                 "data": {"message": {"data": base64.b64encode(b"{}").decode(), "messageId": "1"},
                          "subscription": "projects/p/subscriptions/release"}}
        answer = app.test_client().post("/", json=event, headers={"Content-Type": "application/cloudevents+json"})
        assert answer.status_code == 200, answer.data
    finally:
        monkeypatch.setattr(gcp_runtime, "_ports", None)
    chain.wait(lambda: sop_uids((chain.work / "base" / "released").rglob("*.dcm")) == uids,
               "the released deliveries at the enabled destination")
    assert held() == []
    assert chain.docs.list(exceptions.HELD_DELIVERIES) == {}
    # released (retried) and delivered by the route function: settled, the holds are gone
    def still_pinned():  # route settles right after the send
        return held_ids & {record_id for doc in chain.docs.list(holds.OBJECT_HOLDS).values() for record_id in doc["pins"]}

    chain.wait(lambda: not still_pinned(), "the released records' holds gone", timeout=30)
