"""Healthcare API inputs with Orthanc's DICOMweb standing in for a DICOM store.

The Google credential path runs for real: a throwaway RSA key in a service-account
JSON (GOOGLE_APPLICATION_CREDENTIALS) whose ``token_uri`` is a local token endpoint;
google-auth signs a JWT-bearer grant, posts it there and gets ``t0k``. A local
"Healthcare API" front answers on the store's URL shape
(``/v1/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb/...``), records the
Authorization header of every request and forwards to Orthanc's DICOMweb."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydicom import dcmread

import shared.httpauth
from shared.inputs.healthcare_notify import (
    NOTIFIED,
    NotificationBusy,
    handle_healthcare_notification,
    notification_marker,
    parse_instance_resource,
)
from tests.integration import test_pollers as pollers
from tests.integration.test_pollers import TS_SAMPLES, assert_exactly_once, ingested, ingestor, make_study, poll, upload

# the same Orthanc / embedded-runtime fixtures as the poller tests
gateway_port = pollers.gateway_port
orthanc = pollers.orthanc
make_runtime = pollers.make_runtime

STORE = "projects/proj-1/locations/us-central1/datasets/ds-1/dicomStores/store-1"


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def token_server():
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            requests.append({"path": self.path, "form": dict(urllib.parse.parse_qsl(body.decode()))})
            payload = json.dumps({"access_token": "t0k", "expires_in": 3600, "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = _Server(Handler)
    server.requests = requests
    yield server
    server.close()


@pytest.fixture(scope="module")
def google_credentials(tmp_path_factory, token_server):
    """A service account whose token endpoint is the local token server; the public key
    to check the JWT google-auth signs."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account", "project_id": "proj-1", "private_key_id": "test-key-1", "private_key": pem,
        "client_email": "axiom-test@proj-1.iam.gserviceaccount.com", "client_id": "1234567890",
        "token_uri": f"http://127.0.0.1:{token_server.port}/token",
    }
    path = tmp_path_factory.mktemp("gcp") / "sa.json"
    path.write_text(json.dumps(info))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return path, public


@pytest.fixture
def adc(monkeypatch, google_credentials, token_server):
    path, public = google_credentials
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    shared.httpauth._GOOGLE._credentials = None  # the process-wide ADC cache
    token_server.requests.clear()
    yield public
    shared.httpauth._GOOGLE._credentials = None


@pytest.fixture(scope="module")
def healthcare_front(orthanc):
    """The store's DICOMweb URL shape in front of Orthanc, recording Authorization."""
    seen: list[dict] = []
    prefix = f"/v1/{STORE}/dicomWeb"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            if not self.path.startswith(prefix):
                self.send_error(404)
                return
            r = httpx.get(orthanc.dicomweb + self.path[len(prefix):],
                          headers={"Accept": self.headers.get("Accept", "*/*")}, timeout=30)
            self.send_response(r.status_code)
            for name in ("Content-Type",):
                if name in r.headers:
                    self.send_header(name, r.headers[name])
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        def log_message(self, *args):
            pass

    server = _Server(Handler)
    server.seen = seen
    server.endpoint = f"http://127.0.0.1:{server.port}/v1"
    yield server
    server.close()


def resource_name(path) -> str:
    ds = dcmread(path, stop_before_pixels=True)
    return f"{STORE}/dicomWeb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def assert_google_token_flow(token_server, public_pem: str) -> None:
    """Exactly one token request: a JWT-bearer grant signed with the service account's key."""
    from google.auth import jwt

    assert len(token_server.requests) == 1, token_server.requests
    form = token_server.requests[0]["form"]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    # google-auth posts to the credentials' token_uri; the JWT names Google's token
    # endpoint as its audience whatever that URI is
    claims = jwt.decode(form["assertion"], certs=public_pem, verify=True,
                        audience="https://oauth2.googleapis.com/token")
    assert claims["iss"] == "axiom-test@proj-1.iam.gserviceaccount.com"
    assert "cloud-platform" in claims["scope"]


def test_notification_retrieves_and_ingests_once(tmp_path, orthanc, make_runtime, adc, token_server,
                                                 healthcare_front):
    files = upload(orthanc, make_study(tmp_path / "n", "AXF-GHC-NOTIFY", "20240401", ct=2, samples=TS_SAMPLES[:3]))
    rt = make_runtime([])
    paths = list(files.values())
    attrs = {"action": "StoreInstances", "storeName": STORE, "versionId": "1"}

    # Orthanc's DICOMweb as the store's base URL (the parameter the production caller
    # leaves out); the bearer token still comes from google-auth
    results = [handle_healthcare_notification(resource_name(p).encode(), attrs, ingestor=ingestor(rt),
                                              dicomweb_base=orthanc.dicomweb, docs=rt.docs, source_id="ghc",
                                              tmp_dir=rt.data_dir / "tmp")
               for p in paths[:-1]]
    assert [r.status for r in results] == ["ingested"] * (len(paths) - 1)
    # the production shape: URL built from the resource name and the endpoint
    last = handle_healthcare_notification(resource_name(paths[-1]).encode(), attrs, ingestor=ingestor(rt),
                                          endpoint=healthcare_front.endpoint, docs=rt.docs, source_id="ghc")
    assert last.status == "ingested"
    hit = [s for s in healthcare_front.seen if files and s["path"].endswith(dcmread(paths[-1]).SOPInstanceUID)]
    assert hit and hit[0]["authorization"] == "Bearer t0k"
    assert hit[0]["path"] == "/v1/" + resource_name(paths[-1])
    assert_google_token_flow(token_server, adc)

    # Pub/Sub redelivers: acknowledged, not ingested again; deletions are not retrieved
    again = handle_healthcare_notification(resource_name(paths[0]).encode(), attrs, ingestor=ingestor(rt),
                                           dicomweb_base=orthanc.dicomweb, docs=rt.docs)
    assert again.status == "duplicate"
    gone = handle_healthcare_notification(resource_name(paths[0]).encode(), {"action": "DeleteInstances"},
                                          ingestor=ingestor(rt), dicomweb_base=orthanc.dicomweb, docs=rt.docs)
    assert gone.status == "ignored"
    assert_exactly_once(rt, files, source_type="healthcare")
    assert {m[0]["axiom-source_id"] for m in ingested(rt).values()} == {"ghc"}


def test_notification_failures_raise_for_redelivery(tmp_path, orthanc, make_runtime, adc):
    rt = make_runtime([])
    with pytest.raises(ValueError, match="not a DICOM instance resource name"):
        handle_healthcare_notification(b"projects/p/locations/l/datasets/d", {}, ingestor=ingestor(rt))
    missing = f"{STORE}/dicomWeb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"
    with pytest.raises(Exception, match="HTTP 404"):
        handle_healthcare_notification(missing.encode(), {}, ingestor=ingestor(rt), dicomweb_base=orthanc.dicomweb)
    assert not ingested(rt)
    assert parse_instance_resource(missing).dicomweb_base() == \
        f"https://healthcare.googleapis.com/v1/{STORE}/dicomWeb"


def test_healthcare_poller_with_google_credentials(tmp_path, orthanc, make_runtime, adc, token_server,
                                                   healthcare_front):
    pid = "AXF-GHC-POLL"
    files = upload(orthanc, make_study(tmp_path / "p", pid, "20240402", ct=3, samples=TS_SAMPLES[3:5]))
    rt = make_runtime([{"id": "ghc-store", "type": "healthcare", "project": "proj-1", "location": "us-central1",
                        "dataset": "ds-1", "dicom_store": "store-1", "endpoint": healthcare_front.endpoint,
                        "query": {"PatientID": pid}, "interval_s": 3600}])
    healthcare_front.seen.clear()
    r = poll(rt, "ghc-store")
    assert r.errors == [] and (r.found, r.queued, r.retrieved, r.failed) == (1, 5, 5, 0), r
    assert_exactly_once(rt, files, source_type="healthcare")
    assert healthcare_front.seen and {s["authorization"] for s in healthcare_front.seen} == {"Bearer t0k"}
    paths = [s["path"] for s in healthcare_front.seen]
    assert any(p.startswith(f"/v1/{STORE}/dicomWeb/studies?") for p in paths)
    assert sum("/instances/" in p for p in paths) == 5  # full instances, not metadata
    assert_google_token_flow(token_server, adc)
    r = poll(rt, "ghc-store")
    assert (r.queued, r.retrieved) == (0, 0)


# --- the same notification delivered twice at once (issue 10.14) -----------------------


def deliver_concurrently(resource: str, attributes: dict, deliveries: int = 2, **kwargs) -> list[str]:
    """``deliveries`` deliveries of one notification, each in its own thread, released
    together by a barrier: the status of each ("busy" for NotificationBusy)."""
    barrier = threading.Barrier(deliveries)

    def deliver(_) -> str:
        barrier.wait()
        try:
            return handle_healthcare_notification(resource.encode(), attributes, **kwargs).status
        except NotificationBusy:
            return "busy"

    with ThreadPoolExecutor(deliveries) as pool:
        return list(pool.map(deliver, range(deliveries)))


def assert_each_ingested_once(resources: list[str], attributes: dict, **kwargs) -> None:
    """Two simultaneous deliveries of each notification: one ingests; the other is a
    duplicate, or busy (Pub/Sub delivers it again later, when it is a duplicate)."""
    for resource in resources:
        outcomes = deliver_concurrently(resource, attributes, **kwargs)
        assert sorted(outcomes)[-1] == "ingested" and set(sorted(outcomes)[:-1]) <= {"duplicate", "busy"}, outcomes
    for resource in resources:  # the redeliveries
        assert handle_healthcare_notification(resource.encode(), attributes, **kwargs).status == "duplicate"


def test_concurrent_deliveries_ingest_once(tmp_path, orthanc, make_runtime):
    files = upload(orthanc, make_study(tmp_path / "c", "AXF-GHC-TWICE", "20240403", ct=3, samples=TS_SAMPLES[:2]))
    rt = make_runtime([])
    attrs = {"action": "StoreInstances", "storeName": STORE, "versionId": "7"}
    assert_each_ingested_once([resource_name(p) for p in files.values()], attrs, ingestor=ingestor(rt),
                              dicomweb_base=orthanc.dicomweb, headers={}, docs=rt.docs, source_id="ghc",
                              tmp_dir=rt.data_dir / "tmp")
    assert_exactly_once(rt, files, source_type="healthcare")
    assert {d["state"] for d in rt.docs.list(NOTIFIED).values()} == {"ingested"}


def test_a_failed_delivery_releases_its_claim(tmp_path, orthanc, make_runtime):
    """An ingest that fails after the claim does not leave the notification claimed:
    Pub/Sub's redelivery ingests it. A claim whose holder died is taken over once it
    expires."""
    [path] = make_study(tmp_path / "f", "AXF-GHC-RETRY", "20240404", ct=1)
    rt = make_runtime([])
    kwargs = dict(ingestor=ingestor(rt), dicomweb_base=orthanc.dicomweb, headers={}, docs=rt.docs, source_id="ghc")
    attrs = {"action": "StoreInstances", "versionId": "1"}
    with pytest.raises(Exception, match="HTTP 404"):  # notified before the store has it
        handle_healthcare_notification(resource_name(path).encode(), attrs, **kwargs)
    assert rt.docs.list(NOTIFIED) == {}, "the claim is released"
    upload(orthanc, [path])
    assert handle_healthcare_notification(resource_name(path).encode(), attrs, **kwargs).status == "ingested"

    # a claim left by a delivery that died: busy until it expires, then taken over
    attrs = {"action": "StoreInstances", "versionId": "2"}
    marker = notification_marker(resource_name(path), "2")
    rt.docs.set(NOTIFIED, marker, {"state": "ingesting", "owner": "dead", "until": time.time() + 60})
    with pytest.raises(NotificationBusy):
        handle_healthcare_notification(resource_name(path).encode(), attrs, **kwargs)
    rt.docs.set(NOTIFIED, marker, {"state": "ingesting", "owner": "dead", "until": time.time() - 1})
    assert handle_healthcare_notification(resource_name(path).encode(), attrs, **kwargs).status == "ingested"
    assert rt.docs.get(NOTIFIED, marker)["state"] == "ingested"
    assert [len(v) for v in ingested(rt).values()] == [2]  # versions 1 and 2
