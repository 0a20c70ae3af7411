"""Every destination type against a real peer, through ``axiom-flow serve``: Orthanc
(DICOMweb plugin) by STOW-RS and by C-STORE, dcmtk storescp, fake-gcs-server, a folder,
and a Healthcare-API-shaped front (Google OAuth token endpoint + STOW-RS) for the
Healthcare destination.

Orthanc keeps one copy per SOP Instance whatever it is sent, so "exactly once" is
shown where duplicates would be visible: a counting HTTP proxy in front of Orthanc
records every SOP Instance each STOW-RS request carried, and storescp writes every
received instance under its own name (``+uf``)."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import re
import shutil
import sqlite3
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.support.dicomgen import make_ct_study
from tests.support.orthanc import Orthanc
from tests.support.procs import AxiomServer, StoreSCP, free_port, storescu, wait_for
from tests.support.samples import TS_SAMPLES, make_ts_samples

pytestmark = pytest.mark.dcmtk

# pydicom samples in the other transfer syntaxes
SAMPLE_NAMES = [name for name in TS_SAMPLES if name != "explicit-le"]
FAST_RETRY = {"initial_backoff_s": 0.2, "max_backoff_s": 1.0}


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    return make_ct_study(tmp_path_factory.mktemp("study") / "ct", 30, rows=256, columns=256)


@pytest.fixture
def samples(tmp_path) -> dict[str, tuple[Path, list[str]]]:
    """Fresh copies (new SOP Instance UIDs, a Patient ID) for each test."""
    return make_ts_samples(tmp_path / "samples", SAMPLE_NAMES, jpeg_lossless=False)


def wait_delivered_without_exceptions(server: AxiomServer, sent: dict[str, Path]) -> None:
    wait_for(lambda: server.status()["deliveries"].get("delivered", 0) >= len(sent) or route_exceptions(server),
             60, what="every instance delivered")
    status = server.wait_idle()
    assert route_exceptions(server) == []
    assert status["deliveries"]["delivered"] == len(sent)


def assert_once_at_orthanc(orthanc: Orthanc, sent: dict[str, Path]) -> None:
    """Every sent instance is in Orthanc exactly once, with the same pixel data."""
    stored = orthanc_files(orthanc)
    assert set(stored) == set(sent)
    for uid, path in sent.items():
        assert len(stored[uid]) == 1
        assert_same_instance(path, stored[uid][0])


def send(server: AxiomServer, study: list[Path], samples: dict | None = None) -> dict[str, Path]:
    """storescu everything into the server; returns SOP Instance UID -> source file."""
    if study:
        storescu(server.dicom_port, study)
    for path, opts in (samples or {}).values():
        storescu(server.dicom_port, [path], extra=opts)
    paths = [*study, *(p for p, _ in (samples or {}).values())]
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def route_all(*destinations: dict, **extra) -> dict:
    return {"destinations": list(destinations),
            "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": [d["id"] for d in destinations]}]}],
            **extra}


def orthanc_files(orthanc: Orthanc, auth=None) -> dict[str, list[bytes]]:
    """SOP Instance UID -> the files Orthanc holds for it."""
    out: dict[str, list[bytes]] = {}
    with httpx.Client(base_url=orthanc.url, auth=auth, timeout=30) as client:
        for oid in client.get("/instances").json():
            data = client.get(f"/instances/{oid}/file").content
            out.setdefault(str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID), []).append(data)
    return out


def assert_same_instance(source: Path, stored: bytes) -> None:
    src, got = dcmread(source), dcmread(io.BytesIO(stored))
    assert got.SOPInstanceUID == src.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID, "transfer syntax must be kept"
    assert got.PixelData == src.PixelData, "pixel data must arrive byte for byte"


def route_exceptions(server: AxiomServer) -> list[dict]:
    return [e for e in server.exceptions() if e["stage"] == "route"]


def retries_logged(server: AxiomServer) -> int:
    return len(re.findall(r"deliver message \d+ attempt \d+ failed", server.log_path.read_text(errors="replace")))


def ledger_where(server: AxiomServer) -> list[str]:
    """Where each delivered instance went, from the ledger (read-only)."""
    with sqlite3.connect(f"file:{server.data_dir / 'state.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT info FROM deliveries WHERE state='delivered'").fetchall()
    return [json.loads(info)["where"] for (info,) in rows]


# --- a counting HTTP front ----------------------------------------------------------------


class Front:
    """A small HTTP server in front of Orthanc's DICOMweb: checks authentication,
    records the SOP Instances of every STOW-RS request, forwards to ``upstream``
    (502 when it is down). With ``token_path`` it also serves an OAuth token endpoint
    (Google's token response: access_token, expires_in) and accepts only tokens it
    issued."""

    def __init__(self, upstream: str, *, prefix: str = "/dicom-web", check: Callable[[dict], bool] | None = None,
                 token_path: str | None = None, token_lifetime_s: int = 1, has: Callable[[str], bool] | None = None):
        self.upstream, self.prefix, self.check = upstream.rstrip("/"), prefix.rstrip("/"), check
        self.has = has  # when given: answer 409 / 0x0111 for an instance the peer already has, as dcm4chee does
        self.token_path, self.token_lifetime_s = token_path, token_lifetime_s
        self.stow: list[dict] = []  # one entry per STOW-RS request: uids, status, authorization
        self.tokens: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str, body: bytes | None) -> httpx.Response | None:
                path = self.path[len(front.prefix):]
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("content-type", "accept")}
                try:
                    return httpx.request(method, front.upstream + path, content=body, headers=headers, timeout=60)
                except httpx.HTTPError:
                    return None

            def _authorized(self) -> bool:
                headers = {k.lower(): v for k, v in self.headers.items()}
                if front.token_path:
                    with front._lock:
                        return headers.get("authorization") in {f"Bearer {t}" for t in front.tokens}
                return front.check is None or front.check(headers)

            def do_POST(self):
                body = self._body()
                if front.token_path and self.path == front.token_path:
                    with front._lock:
                        token = f"token-{len(front.tokens) + 1}"
                        front.tokens.append(token)
                    return self._reply(200, json.dumps({"access_token": token, "expires_in": front.token_lifetime_s,
                                                        "token_type": "Bearer"}).encode(), "application/json")
                if not self.path.startswith(front.prefix + "/"):
                    return self._reply(404, b"unknown path " + self.path.encode())
                if not self._authorized():
                    with front._lock:
                        front.refused += 1
                    return self._reply(401, b"unauthorized")
                uids = _part_uids(self.headers["Content-Type"], body)
                if front.has and any(front.has(uid) for uid in uids):
                    with front._lock:
                        front.stow.append({"uids": uids, "status": 409, "authorization": None})
                    failed = [{"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [0x0111]}}
                              for uid in uids if front.has(uid)]
                    return self._reply(409, json.dumps({"00081198": {"vr": "SQ", "Value": failed}}).encode(),
                                       "application/dicom+json")
                response = self._forward("POST", body)
                with front._lock:
                    front.stow.append({"uids": uids,
                                       "status": response.status_code if response is not None else 502,
                                       "authorization": self.headers.get("Authorization")})
                if response is None:
                    return self._reply(502, b"upstream down")
                self._reply(response.status_code, response.content, response.headers.get("content-type", "text/plain"))

            def do_GET(self):
                if not self.path.startswith(front.prefix + "/") or not self._authorized():
                    return self._reply(404 if not self.path.startswith(front.prefix + "/") else 401)
                response = self._forward("GET", None)
                if response is None:
                    return self._reply(502, b"upstream down")
                self._reply(response.status_code, response.content, response.headers.get("content-type", "text/plain"))

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stored(self) -> Counter:
        """SOP Instance UID -> how many successful STOW-RS requests carried it."""
        with self._lock:
            return Counter(uid for req in self.stow if req["status"] == 200 for uid in req["uids"])

    def __enter__(self) -> "Front":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _part_uids(content_type: str, body: bytes) -> list[str]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [str(dcmread(io.BytesIO(part.get_payload(decode=True)), stop_before_pixels=True).SOPInstanceUID)
            for part in message.iter_parts()]


class AuthOrthanc(Orthanc):
    """Orthanc with HTTP basic authentication on; the helper's own REST calls (and its
    readiness check) carry the credentials in the URL."""

    USER, PASSWORD = "axiom", "s3cret-pw"

    def __init__(self, workdir: Path, **kw):
        super().__init__(workdir, extra={"AuthenticationEnabled": True,
                                         "RegisteredUsers": {self.USER: self.PASSWORD}}, **kw)

    @property
    def url(self) -> str:
        return f"http://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.http_port}"

    @property
    def plain_dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"


# --- 1. STOW-RS to Orthanc ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "bearer", "header-batched"])
def test_stow_rs_to_orthanc_exactly_once(tmp_path, study, samples, mode):
    """Auth none straight to Orthanc; bearer token and API-key header through the
    counting front, which shows each instance in exactly one request; with batching,
    fewer requests than instances."""
    token, key = "tok-0123456789", "key-9876543210"
    checks = {"bearer": lambda h: h.get("authorization") == f"Bearer {token}",
              "header-batched": lambda h: h.get("x-api-key") == key}
    with Orthanc(tmp_path / "orthanc") as orthanc, Front(orthanc.dicomweb, check=checks.get(mode)) as front:
        dest = {"id": "pacs", "type": "dicomweb", "url": orthanc.dicomweb, "retry": {"max_attempts": 3, **FAST_RETRY}}
        if mode == "bearer":
            dest.update(url=front.url + "/dicom-web", auth={"type": "bearer", "token": "env:AXIOM_TEST_TOKEN"})
        elif mode == "header-batched":
            dest.update(url=front.url + "/dicom-web", auth={"type": "header", "header": "X-API-Key",
                                                             "value": "env:AXIOM_TEST_KEY"},
                        batch_max_instances=10, max_concurrency=10)
        env = {"AXIOM_TEST_TOKEN": token, "AXIOM_TEST_KEY": key}
        with AxiomServer(tmp_path / "data", route_all(dest), env=env) as server:
            sent = send(server, study, samples)
            wait_delivered_without_exceptions(server, sent)
        assert_once_at_orthanc(orthanc, sent)
        if mode != "direct":
            assert front.refused == 0
            assert front.stored() == Counter({uid: 1 for uid in sent}), "each instance in exactly one request"
            requests = len(front.stow)
            if mode == "header-batched":
                assert requests < len(sent), f"{requests} requests for {len(sent)} instances: no batching"
                assert max(len(r["uids"]) for r in front.stow) <= 10
            else:
                assert requests == len(sent)


def test_stow_rs_basic_auth_against_orthanc(tmp_path, study):
    """Orthanc with authentication on: the right password delivers, a wrong one ends,
    after the destination's attempts, in one exception record per instance."""
    files = study[:5]
    with AuthOrthanc(tmp_path / "orthanc") as orthanc:
        good = {"id": "good", "type": "dicomweb", "url": orthanc.plain_dicomweb,
                "auth": {"type": "basic", "username": orthanc.USER, "password": "env:AXIOM_TEST_PW"}}
        bad = {"id": "bad", "type": "dicomweb", "url": orthanc.plain_dicomweb,
               "auth": {"type": "basic", "username": orthanc.USER, "password": "file:" + str(tmp_path / "wrong-pw")},
               "retry": {"max_attempts": 2, **FAST_RETRY}}
        (tmp_path / "wrong-pw").write_text("not-the-password\n")
        with AxiomServer(tmp_path / "data", route_all(good, bad), env={"AXIOM_TEST_PW": orthanc.PASSWORD}) as server:
            sent = send(server, files)
            wait_for(lambda: len(route_exceptions(server)) >= len(sent), 60, what="an exception per instance")
            status = server.wait_idle()
            records = route_exceptions(server)
            assert status["deliveries"]["delivered"] == len(sent)
        assert sorted(r["sop_instance_uid"] for r in records) == sorted(sent)
        for record in records:
            assert record["destination_id"] == "bad" and record["status"] == "failed"
            assert record["reason"].startswith("after 2 attempt(s): ") and "HTTP 401" in record["reason"], record
            assert record["retry"]["topic"] == "deliver"
        stored = orthanc_files(orthanc, auth=(orthanc.USER, orthanc.PASSWORD))
        assert set(stored) == set(sent)
        for uid, path in sent.items():
            assert_same_instance(path, stored[uid][0])


# --- 2. C-STORE to Orthanc --------------------------------------------------------------------


def test_cstore_to_orthanc(tmp_path, study, samples):
    with Orthanc(tmp_path / "orthanc") as orthanc:
        dest = {"id": "pacs", "type": "cstore", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                "port": orthanc.dicom_port, "retry": {"max_attempts": 3, **FAST_RETRY}}
        with AxiomServer(tmp_path / "data", route_all(dest)) as server:
            sent = send(server, study, samples)
            wait_delivered_without_exceptions(server, sent)
        assert_once_at_orthanc(orthanc, sent)  # Orthanc stores as received: same transfer syntax


# --- 3. a presentation context the peer refuses ---------------------------------------------


def test_refused_presentation_context_is_an_exception_not_a_drop(tmp_path, samples):
    """storescp with ``+x=`` accepts uncompressed transfer syntaxes only: the JPEG 2000
    instance becomes a 'refused' exception record (at once, no retries) naming the SOP
    class and transfer syntax; the others are delivered."""
    with StoreSCP(tmp_path / "scp", extra=["+x="]) as scp:
        dest = {"id": "pacs", "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port,
                "retry": {"max_attempts": 5, **FAST_RETRY}}
        chosen = {k: samples[k] for k in ("implicit-le", "explicit-be", "jpeg-2000")}
        with AxiomServer(tmp_path / "data", route_all(dest)) as server:
            sent = send(server, [], chosen)
            wait_for(lambda: route_exceptions(server), 30, what="an exception record")
            status = server.wait_idle()
            records = route_exceptions(server)
            assert retries_logged(server) == 0, "a refused context is not worth retrying"
        j2k = str(dcmread(chosen["jpeg-2000"][0], stop_before_pixels=True).SOPInstanceUID)
        assert len(records) == 1
        record = records[0]
        assert record["status"] == "refused" and record["sop_instance_uid"] == j2k
        assert "1.2.840.10008.5.1.4.1.1.4" in record["reason"] and "MR Image Storage" in record["reason"]
        assert "1.2.840.10008.1.2.4.90" in record["reason"], record["reason"]
        assert "transfer syntax not supported" in record["reason"]
        assert record["retry"]["topic"] == "deliver" and j2k in record["retry"]["body"]
        assert status["deliveries"]["delivered"] == 2
        received = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()]
        assert sorted(received) == sorted(set(sent) - {j2k})


# --- 4. a destination that is down --------------------------------------------------------------


def test_destination_down_for_a_while(tmp_path, study):
    """Orthanc (C-STORE and, through the counting front, STOW-RS) and storescp are down
    when the instances arrive; once retries have happened they come back on the same
    ports. Everything is delivered, nothing twice, no exception records."""
    files = study[:8]
    retry = {"max_attempts": 20, **FAST_RETRY}
    orthanc = Orthanc(tmp_path / "orthanc")
    scp = StoreSCP(tmp_path / "scp")
    with Front(orthanc.dicomweb) as front:
        dests = [
            {"id": "orthanc-dimse", "type": "cstore", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
             "port": orthanc.dicom_port, "retry": retry},
            {"id": "orthanc-stow", "type": "dicomweb", "url": front.url + "/dicom-web", "retry": retry},
            {"id": "storescp", "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port,
             "retry": retry},
        ]
        try:
            with AxiomServer(tmp_path / "data", route_all(*dests)) as server:
                sent = send(server, files)
                # every destination has failed at least twice for the first instance
                wait_for(lambda: retries_logged(server) >= 2 * len(dests), 30, what="retries while down")
                status = server.status()
                assert status["queue"]["deliver"] > 0 and status["exceptions"] == 0
                assert status["deliveries"].get("delivered", 0) == 0
                orthanc.start()
                scp.start()
                wait_for(lambda: server.status()["deliveries"].get("delivered", 0) >= 3 * len(sent)
                         or route_exceptions(server), 60, what="delivery after the peers came back")
                status = server.wait_idle()
                assert route_exceptions(server) == []
                assert status["deliveries"]["delivered"] == 3 * len(sent)
            stored = orthanc_files(orthanc)
            assert set(stored) == set(sent)
            for uid, path in sent.items():
                assert_same_instance(path, stored[uid][0])
            assert front.stored() == Counter({uid: 1 for uid in sent})
            assert any(r["status"] == 502 for r in front.stow), "the STOW-RS destination saw the outage"
            at_scp = Counter(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files())
            assert at_scp == Counter({uid: 1 for uid in sent})
        finally:
            orthanc.stop()
            scp.stop()


def test_destination_that_stays_down_ends_in_exception_records(tmp_path, study):
    """After ``max_attempts`` each delivery is an exception record holding its message;
    once a peer listens, retrying one record (POST /api/v1/exceptions/{id}/retry) delivers
    that instance, once."""
    files = study[:4]
    retry = {"max_attempts": 3, **FAST_RETRY}
    scp = StoreSCP(tmp_path / "scp")  # not started yet: its port is closed
    dests = [
        {"id": "dimse", "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port,
         "retry": retry, "timeout_s": 5},
        {"id": "stow", "type": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web", "retry": retry},
    ]
    try:
        with AxiomServer(tmp_path / "data", route_all(*dests)) as server:
            sent = send(server, files)
            wait_for(lambda: len(route_exceptions(server)) >= 2 * len(sent), 60, what="an exception per delivery")
            status = server.wait_idle()
            records = route_exceptions(server)
            assert status["deliveries"].get("delivered", 0) == 0
            assert len(records) == 2 * len(sent)
            for dest in ("dimse", "stow"):
                mine = [r for r in records if r["destination_id"] == dest]
                assert sorted(r["sop_instance_uid"] for r in mine) == sorted(sent)
                for record in mine:
                    assert record["status"] == "failed"
                    assert record["reason"].startswith("after 3 attempt(s): "), record["reason"]
                    # what is needed to retry it later: the delivery message itself
                    assert record["retry"]["topic"] == "deliver"
                    body = json.loads(record["retry"]["body"])
                    assert body["sop_instance_uid"] == record["sop_instance_uid"] and body["destination_id"] == dest
            # two failed attempts (0.2 s, then 0.4 s backoff) before the last one per delivery
            assert retries_logged(server) == 2 * 2 * len(sent)

            scp.start()
            one = next(r for r in records if r["destination_id"] == "dimse")
            r = server.retry(one["id"])
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "retried"
            wait_for(lambda: server.status()["deliveries"].get("delivered", 0) >= 1, 30, what="the retried delivery")
            status = server.wait_idle()
            assert status["deliveries"]["delivered"] == 1
            assert len(route_exceptions(server)) == 2 * len(sent), "no new record"
        received = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()]
        assert received == [one["sop_instance_uid"]]
    finally:
        scp.stop()


# --- 5. conflicts: same SOP Instance, other bytes ------------------------------------------------


def test_conflicts_on_gcs_filesystem_and_dicomweb(tmp_path):
    """Three sends of one CT instance, morphed by calling AE: "A" sets InstitutionName
    to ONE and goes to gcs-1/fs-1/stow-1; "B" sets TWO and goes to the same destinations
    (a conflict: an exception record saying the bytes differ, the stored copy left
    alone); "A2" sets ONE again and goes to gcs-2/fs-2/stow-2, which write to the same
    bucket, folder and Orthanc (a new ledger key, so the peer is asked, and identical
    bytes there count as delivered). The STOW-RS peer is Orthanc behind a front that
    answers 409 with Failure Reason 0x0111 for an instance Orthanc already has (Orthanc
    itself answers 200 and keeps its copy); the sender then compares Orthanc's copy,
    fetched by WADO-RS, with its own."""
    from tests.support.gcp import FakeGCS, unique

    source = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), source)
    ds = dcmread(source)
    study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    bucket, folder = unique("dest"), tmp_path / "fs-dest"
    template = "{StudyInstanceUID}/{SOPInstanceUID}.dcm"
    name = f"{study_uid}/{sop_uid}.dcm"
    retry = {"max_attempts": 3, **FAST_RETRY}
    orthanc = Orthanc(tmp_path / "orthanc")

    def has(uid: str) -> bool:
        return bool(httpx.post(f"{orthanc.url}/tools/lookup", content=uid, timeout=10).json())

    gcs = FakeGCS(tmp_path / "logs", tmp_path / "gcs")
    with orthanc, Front(orthanc.dicomweb, has=has) as front:
        def dests(n: int) -> list[dict]:
            return [{"id": f"gcs-{n}", "type": "gcs", "bucket": bucket, "name_template": template, "retry": retry},
                    {"id": f"fs-{n}", "type": "filesystem", "path": str(folder), "name_template": template},
                    {"id": f"stow-{n}", "type": "dicomweb", "url": front.url + "/dicom-web", "retry": retry}]

        def rule(ae: str, value: str, n: int) -> dict:
            return {"id": ae, "when": {"association": "calling_ae", "value": ae},
                    "actions": [{"action": "set", "tag": "InstitutionName", "value": value}],
                    "destinations": [f"gcs-{n}", f"fs-{n}", f"stow-{n}"]}

        config = {"destinations": dests(1) + dests(2),
                  "rulesets": [{"id": "main", "rules": [rule("A", "ONE", 1), rule("B", "TWO", 1), rule("A2", "ONE", 2)]}]}
        try:
            gcs.start()
            gcs.create_buckets(bucket)
            env = {"STORAGE_EMULATOR_HOST": gcs.url, "GOOGLE_CLOUD_PROJECT": "axiom-test"}
            with AxiomServer(tmp_path / "data", config, env=env) as server:
                def delivered() -> int:
                    return server.status()["deliveries"].get("delivered", 0)

                def at_orthanc() -> bytes:
                    [data] = orthanc_files(orthanc)[sop_uid]
                    return data

                storescu(server.dicom_port, [source], calling_ae="A")
                wait_for(lambda: delivered() >= 3 or route_exceptions(server), 30, what="first delivery")
                server.wait_idle()
                assert route_exceptions(server) == []
                blobs = {b.name: b for b in gcs.client().list_blobs(bucket)}
                assert list(blobs) == [name], "object named from the template"
                first = blobs[name].download_as_bytes()
                assert dcmread(io.BytesIO(first)).InstitutionName == "ONE"
                assert (folder / name).read_bytes() == first
                assert dcmread(io.BytesIO(at_orthanc())).InstitutionName == "ONE"

                storescu(server.dicom_port, [source], calling_ae="B")
                wait_for(lambda: len(route_exceptions(server)) >= 3, 30, what="three conflict records")
                server.wait_idle()
                records = {r["destination_id"]: r for r in route_exceptions(server)}
                assert set(records) == {"gcs-1", "fs-1", "stow-1"}
                for record in records.values():
                    assert record["status"] == "refused" and record["sop_instance_uid"] == sop_uid
                    assert record["retry"]["topic"] == "deliver"
                # the reasons name the destination and the SOP Instance, not the name (made of tag values)
                assert records["gcs-1"]["reason"] == (f"gcs-1 already has a different data set under this instance's "
                                                      f"object name in bucket {bucket} (SOP Instance {sop_uid})")
                assert records["fs-1"]["reason"] == (f"fs-1 already has a different data set under this instance's "
                                                     f"name (SOP Instance {sop_uid})")
                assert records["stow-1"]["reason"] == f"stow-1 already has SOP Instance {sop_uid} with different content"
                # no copy was touched
                assert gcs.client().bucket(bucket).blob(name).download_as_bytes() == first
                assert (folder / name).read_bytes() == first
                assert dcmread(io.BytesIO(at_orthanc())).InstitutionName == "ONE"

                storescu(server.dicom_port, [source], calling_ae="A2")
                wait_for(lambda: delivered() >= 6 or len(route_exceptions(server)) > 3, 30, what="same bytes again")
                status = server.wait_idle()
                assert len(route_exceptions(server)) == 3, "identical bytes already there are no conflict"
                assert status["deliveries"]["delivered"] == 6
                where = ledger_where(server)
                assert f"gs://{bucket}/{name} (already there)" in where
                assert f"{folder / name} (already there)" in where
                assert "stow-2 (already there)" in where
                assert [b.name for b in gcs.client().list_blobs(bucket)] == [name]
            # one POST reached Orthanc; the other two were answered 409 by the front
            assert [r["status"] for r in front.stow] == [200, 409, 409]
        finally:
            gcs.stop()


# --- 6. per-destination concurrency ----------------------------------------------------------------


def max_open_associations(log_text: str) -> tuple[int, int]:
    """(most associations open at once, associations opened) from storescp -v output."""
    open_now = peak = opened = 0
    for line in log_text.splitlines():
        if "Association Acknowledged" in line:
            open_now += 1
            opened += 1
            peak = max(peak, open_now)
        elif "Association Release" in line or "Association Aborted" in line:
            open_now = max(0, open_now - 1)
    return peak, opened


def test_max_concurrency_one(tmp_path, study, samples):
    """max_concurrency 1 against storescp, with two senders at once and several (SOP
    class, transfer syntax) pairs, so pooled associations have to be given up for
    others: all delivered once, never two associations open together."""
    with StoreSCP(tmp_path / "scp") as scp:
        dest = {"id": "pacs", "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port,
                "max_concurrency": 1, "retry": {"max_attempts": 5, **FAST_RETRY}}
        with AxiomServer(tmp_path / "data", route_all(dest)) as server:
            before = scp.log_path.read_text(errors="replace")
            t = threading.Thread(target=send, args=(server, study))
            t.start()
            try:
                sent = send(server, [], samples)
            finally:
                t.join()
            sent.update({str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in study})
            wait_for(lambda: scp.received_count() >= len(sent) or route_exceptions(server), 60,
                     what="every instance at storescp")
            server.wait_idle()
            assert route_exceptions(server) == []
        received = Counter(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files())
        assert received == Counter({uid: 1 for uid in sent})
        wait_for(lambda: max_open_associations(scp.log_path.read_text(errors="replace")[len(before):])[0] >= 1, 5)
        peak, opened = max_open_associations(scp.log_path.read_text(errors="replace")[len(before):])
        assert peak == 1, f"{peak} associations open at once"
        assert opened >= 2  # the pool switched associations between transfer syntaxes


# --- 7. Healthcare API destination ------------------------------------------------------------------


def test_healthcare_destination_with_google_credentials(tmp_path, study):
    """The Healthcare destination builds its URL from project/location/dataset/store
    and authenticates with google-auth: a service account key whose token URI is the
    front's token endpoint. Tokens live 1 s, less than google-auth's refresh margin, so
    each request refreshes: every STOW-RS request carries a token just issued."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    files = study[:4]
    prefix = "/v1/projects/prj-1/locations/europe-west4/datasets/ds-1/dicomStores/store-1/dicomWeb"
    with Orthanc(tmp_path / "orthanc") as orthanc, Front(orthanc.dicomweb, prefix=prefix, token_path="/token") as front:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        credentials = tmp_path / "sa.json"
        credentials.write_text(json.dumps({
            "type": "service_account", "project_id": "prj-1", "private_key_id": "k1",
            "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode(),
            "client_email": "axiom@prj-1.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": front.url + "/token"}))
        dest = {"id": "hc", "type": "healthcare", "project": "prj-1", "location": "europe-west4", "dataset": "ds-1",
                "dicom_store": "store-1", "endpoint": front.url + "/v1", "retry": {"max_attempts": 3, **FAST_RETRY}}
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(credentials), "GOOGLE_CLOUD_PROJECT": "prj-1"}
        with AxiomServer(tmp_path / "data", route_all(dest), env=env) as server:
            sent = send(server, files)
            wait_for(lambda: server.status()["deliveries"].get("delivered", 0) >= len(sent) or route_exceptions(server),
                     60, what="every instance delivered")
            server.wait_idle()
            assert route_exceptions(server) == []
        assert front.refused == 0
        assert front.stored() == Counter({uid: 1 for uid in sent})
        used = [r["authorization"] for r in front.stow]
        assert len(front.tokens) >= 2 and len(set(used)) >= 2, "tokens were refreshed"
        assert set(used) <= {f"Bearer {t}" for t in front.tokens}
        stored = orthanc_files(orthanc)
        for uid, path in sent.items():
            assert_same_instance(path, stored[uid][0])
