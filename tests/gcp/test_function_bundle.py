"""The functions' source bundle as Cloud Build makes it and a Cloud Run function's
build installs it: scripts/build_function_bundle.py's zip, unzipped into a directory
of its own, its requirements.txt installed with pip into a new virtualenv, and the
entry points called in that virtualenv (a subprocess, away from the repository and
the test environment) by functions-framework with CloudEvents shaped as Eventarc
delivers them (binary mode, a Pub/Sub ``messagePublished`` whose message is the
ingest bucket's OBJECT_FINALIZE notification), against the Firestore and Pub/Sub
emulators and fake-gcs-server.

Here (not in a directory of its own) to share the session's emulators. PyPI must be
reachable; the install takes 1.5 to 2.5 minutes on the 2-core test bed with a warm pip
cache (the whole test 2.5 to 5 minutes, with the emulators' start).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
import venv
import zipfile
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from shared.config import parse_config
from shared.messages import TOPIC_CROSSWALK, TOPIC_DELIVER, TOPIC_PLANNED, TOPICS, Delivery, IngestMetadata, Plan
from shared.runtime import gcp as gcp_runtime
from tests.support.databases import load_table, postgres_server  # noqa: F401 (fixture)
from tests.support.gcp import PROJECT, PubSubAdmin, emulator_env, unique
from tests.support.procs import REPO

CT = Path(get_testdata_file("CT_small.dcm"))
INSTITUTION = "AXIOM BUNDLE"
RESEARCH_ID = "R-BUNDLE-1"

# Run by the bundle's virtualenv: isolated (-I: no PYTHONPATH, no user site, not the
# current directory), with only the unzipped bundle added, as the functions' runtime
# has its source root. Reads {"target", "headers", "body"} on stdin.
DRIVER = r"""
import json, sys
source = sys.argv[1]
sys.path.insert(0, source)
request = json.load(sys.stdin)
import functions_framework
app = functions_framework.create_app(target=request["target"], source=source + "/main.py", signature_type="cloudevent")
answer = app.test_client().post("/", data=request["body"].encode(), headers=request["headers"])
import shared
print(json.dumps({"status": answer.status_code, "body": answer.get_data(as_text=True),
                  "shared": shared.__file__, "python": sys.executable}))
"""

# The api function, built from the bundle's api.py as GOOGLE_FUNCTION_SOURCE=api.py
# makes the buildpack build it; argv: source root, then paths to GET.
API_DRIVER = r"""
import json, sys
source = sys.argv[1]
sys.path.insert(0, source)
import functions_framework
from starlette.testclient import TestClient
app = functions_framework.create_app(target="api", source=source + "/api.py")
client = TestClient(app, raise_server_exceptions=False)
print(json.dumps({path: client.get(path).status_code for path in sys.argv[2:]}))
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    """(unzipped bundle, its virtualenv's python)."""
    work = tmp_path_factory.mktemp("bundle")
    built = subprocess.run([sys.executable, str(REPO / "scripts" / "build_function_bundle.py"), "--out-dir",
                            str(work / "out")], capture_output=True, text=True, check=True)
    zip_path = Path(built.stdout.strip())
    source = work / "source"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(source)
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    started = time.monotonic()
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "--require-hashes", "-r", str(source / "requirements.txt")],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-4000:]
    print(f"bundle installed in a new virtualenv in {time.monotonic() - started:.0f} s")
    return source, python


@pytest.fixture(scope="module")
def deployment(emulators, fake_gcs, tmp_path_factory, postgres_server):  # noqa: F811
    """Topics, buckets and the config in Firestore for one deployment (unique names);
    the environment the functions get."""
    firestore, pubsub = emulators
    prefix, collections = unique("b") + "-", unique("y") + "-"
    ingest, processed, quarantine = unique("in"), unique("pr"), unique("qu")
    admin = PubSubAdmin(pubsub)
    for name in TOPICS:
        admin.create_topic(f"{prefix}{name}")
    for topic in (TOPIC_CROSSWALK, TOPIC_PLANNED, TOPIC_DELIVER):
        admin.create_pull_subscription(f"{prefix}{topic}-tap", f"{prefix}{topic}")
    fake_gcs.create_buckets(ingest, processed, quarantine)
    from shared.adapters.firestore import FirestoreDocumentStore

    db = postgres_server
    db.start()
    # the crosswalk map, read through the bundle's own PostgreSQL driver
    load_table(db, "bundle_ids", ["mrn", "research_id"], [(str(dcmread(CT, stop_before_pixels=True).PatientID),
                                                           RESEARCH_ID)])
    gcp_runtime.load_config(parse_config({
        "settings": {"ingest_bucket": ingest, "processed_bucket": processed, "quarantine_bucket": quarantine},
        "destinations": [{"id": "archive", "type": "filesystem", "path": "archive"}],
        "crosswalk_sources": [{"id": "mpi", "type": "postgresql", "host": "127.0.0.1", "port": db.port,
                               "database": db.database, "user": db.user, "password": "env:AXIOM_TEST_MPI_PASSWORD"}],
        "crosswalks": [{"id": "research", "source": "mpi", "table": "bundle_ids", "keys": ["mrn"],
                        "value": "research_id"}],
        "rulesets": [{"id": "all", "rules": [
            {"id": "ct", "when": {"tag": "Modality", "value": "CT"},
             "actions": [{"action": "set", "tag": "InstitutionName", "value": INSTITUTION},
                         {"action": "crosswalk", "tag": "PatientID", "table": "research", "on_missing": "fail"}],
             "destinations": ["archive"]}]}],
    }), FirestoreDocumentStore(prefix=collections))
    base_dir = tmp_path_factory.mktemp("base")
    env = {**emulator_env(firestore, pubsub, fake_gcs), "AXIOM_TOPIC_PREFIX": prefix,
           "AXIOM_COLLECTION_PREFIX": collections, "AXIOM_BASE_DIR": str(base_dir),
           "AXIOM_TEST_MPI_PASSWORD": db.password}
    yield {"env": env, "admin": admin, "prefix": prefix, "ingest": ingest, "gcs": fake_gcs, "archive": base_dir / "archive"}
    admin.close()


def run_driver(bundle, env: dict, driver: str, args: list[str], stdin: str = "") -> dict:
    source, python = bundle
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **env}
    done = subprocess.run([str(python), "-I", "-c", driver, str(source), *args], input=stdin, env=clean_env,
                          cwd=source, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def call(bundle, env: dict, target: str, headers: dict, body: bytes) -> dict:
    request = {"target": target, "headers": headers, "body": body.decode()}
    return run_driver(bundle, env, DRIVER, [], json.dumps(request))


def eventarc_pubsub_event(project: str, topic: str, data: bytes, attributes: dict) -> tuple[dict, bytes]:
    """A Pub/Sub message as Eventarc pushes it to a Cloud Run function: a binary-mode
    CloudEvent (ce-* headers) whose body is the push envelope."""
    message_id = str(uuid.uuid4().int)[:16]
    body = {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": message_id,
                        "publishTime": "2026-12-01T10:00:00.000Z"},
            "subscription": f"projects/{project}/subscriptions/eventarc-{topic}-sub"}
    headers = {"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": message_id,
               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
               "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
               "ce-time": "2026-12-01T10:00:00.000Z"}
    return headers, json.dumps(body).encode()


def test_the_bundle_installs_alone_and_its_entry_points_run_the_stages(bundle, deployment):
    """match, crosswalk, morph and route, each called in the bundle's virtualenv with the
    message the previous one published: the crosswalk reads PostgreSQL through the
    driver the lock installs, and the instance ends in the filesystem destination."""
    env, admin, prefix, gcs = deployment["env"], deployment["admin"], deployment["prefix"], deployment["gcs"]
    from shared.adapters.gcs import GCSBlobStore
    from shared.inputs.ingest import Ingestor

    blob = Ingestor(GCSBlobStore(gcs.client()), deployment["ingest"]).ingest_file(
        CT, IngestMetadata(source_type="cstore", calling_ae="MOD1"))
    # the notification GCS sends: the object's JSON API resource, and its attributes
    resource = httpx.get(f"{gcs.url}/storage/v1/b/{blob.bucket}/o/{blob.name}", timeout=10).json()
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": blob.bucket, "objectId": blob.name,
                  "objectGeneration": str(resource["generation"]), "payloadFormat": "JSON_API_V1",
                  "notificationConfig": f"projects/_/buckets/{blob.bucket}/notificationConfigs/1",
                  "eventTime": "2026-12-01T10:00:00.000000Z"}

    answer = call(bundle, env, "match", *eventarc_pubsub_event(PROJECT, f"{prefix}ingest",
                                                               json.dumps(resource).encode(), attributes))
    assert answer["status"] == 200, answer["body"]
    assert answer["shared"].startswith(str(bundle[0])), answer  # the bundle's copy, not the repository's
    [unresolved] = admin.pull_all(f"{prefix}{TOPIC_CROSSWALK}-tap", settle_s=0.5)
    assert Plan.model_validate_json(unresolved.message.data).lookups is None

    answer = call(bundle, env, "crosswalk", *eventarc_pubsub_event(PROJECT, f"{prefix}crosswalk",
                                                                   unresolved.message.data,
                                                                   dict(unresolved.message.attributes)))
    assert answer["status"] == 200, answer["body"]
    [planned] = admin.pull_all(f"{prefix}{TOPIC_PLANNED}-tap", settle_s=0.5)
    plan = Plan.model_validate_json(planned.message.data)
    assert [(lk.value, lk.source) for lk in plan.lookups] == [(RESEARCH_ID, "table")]
    assert plan.sop_instance_uid == str(dcmread(CT, stop_before_pixels=True).SOPInstanceUID)
    assert plan.blob.name == blob.name and plan.destination_ids == ["archive"]
    assert plan.ingest.calling_ae == "MOD1"

    answer = call(bundle, env, "morph", *eventarc_pubsub_event(PROJECT, f"{prefix}planned", planned.message.data,
                                                               dict(planned.message.attributes)))
    assert answer["status"] == 200, answer["body"]
    [delivering] = admin.pull_all(f"{prefix}{TOPIC_DELIVER}-tap", settle_s=0.5)
    delivery = Delivery.model_validate_json(delivering.message.data)
    assert delivery.destination_id == "archive" and delivery.sop_instance_uid == plan.sop_instance_uid
    with GCSBlobStore(gcs.client()).local_path(delivery.blob) as path:
        morphed = path.read_bytes()
    morphed_ds = dcmread(BytesIO(morphed))  # morphed in the bundle's virtualenv
    assert (morphed_ds.InstitutionName, morphed_ds.PatientID) == (INSTITUTION, RESEARCH_ID)

    answer = call(bundle, env, "route", *eventarc_pubsub_event(PROJECT, f"{prefix}deliver", delivering.message.data,
                                                               dict(delivering.message.attributes)))
    assert answer["status"] == 200, answer["body"]
    [delivered] = deployment["archive"].rglob("*.dcm")
    assert delivered.read_bytes() == morphed  # the filesystem destination got the processed object as it is


def test_the_bundle_serves_the_config_api_from_its_own_entry_module(bundle, deployment):
    """api.py, as its function is built (GOOGLE_FUNCTION_SOURCE=api.py): the ASGI app
    answers, a request without a key is refused after the app read Firestore's users."""
    answers = run_driver(bundle, deployment["env"], API_DRIVER, ["/api/v1/openapi.json", "/api/v1/me"])
    assert answers == {"/api/v1/openapi.json": 200, "/api/v1/me": 401}
