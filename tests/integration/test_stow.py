"""STOW-RS into ``axiom-flow serve``: dicomweb-client (a client no one here wrote) and
raw HTTP for bad input. Instances go on to a folder and to dcmtk storescp, which keeps
every received instance under its own name, so a duplicate would show."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, StoreSCP, wait_for

KEYS = "first-key-0123456789\n# a comment line\nsecond-key-9876543210\n"
KEY = "second-key-9876543210"
ENV = {"AXIOM_TEST_STOW_KEYS": KEYS}

REFERENCED = "00081199"
FAILED = "00081198"
FAILURE_REASON = "00081197"
SOP_UID = "00081155"

# pydicom samples across transfer syntaxes: explicit/implicit LE, big endian, deflated,
# JPEG baseline, JPEG-LS, JPEG 2000, RLE
SAMPLES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
           "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"]


def config(storescp: StoreSCP | None = None, **stow) -> dict:
    destinations = [{"id": "archive", "type": "filesystem", "path": "out"}]
    if storescp is not None:
        destinations.append({"id": "pacs", "type": "cstore", "ae_title": storescp.ae_title, "host": "127.0.0.1",
                             "port": storescp.port, "retry": {"max_attempts": 3, "initial_backoff_s": 0.2}})
    return {
        "destinations": destinations,
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": [d["id"] for d in destinations]}]}],
        "stow": {"api_keys": "env:AXIOM_TEST_STOW_KEYS", **stow},
    }


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    # StoreSCP runs storescp --fork: the cstore destination keeps one pooled association
    # per (SOP class, transfer syntax) open, and the samples span eight of them
    with StoreSCP(tmp_path_factory.mktemp("stow") / "storescp") as scp:
        yield scp


@pytest.fixture(scope="module")
def server(tmp_path_factory, storescp):
    with AxiomServer(tmp_path_factory.mktemp("stow") / "data", config(storescp), env=ENV) as srv:
        yield srv


def base_url(server: AxiomServer) -> str:
    return f"http://127.0.0.1:{server.http_port}/dicomweb"


def archived(server: AxiomServer) -> dict[str, Path]:
    root = server.data_dir / "out"
    return {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in root.rglob("*.dcm")} if root.exists() else {}


def at_pacs(storescp: StoreSCP) -> list[str]:
    """SOP Instance UIDs received by storescp, one entry per received instance."""
    return [dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in storescp.files()]


def wait_delivered(server: AxiomServer, storescp: StoreSCP, uids: set[str]) -> None:
    wait_for(lambda: uids <= set(archived(server)) and uids <= set(at_pacs(storescp)), 120,
             what=f"{len(uids)} instance(s) at both destinations")
    server.wait_idle()


def with_new_uids(path, study_uid: str | None = None):
    """A pydicom sample with fresh UIDs (several samples share one) and a Patient ID,
    which validation requires and some samples lack. Pixel data untouched."""
    ds = dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "AXF-STOW"
    return ds


def part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart(parts: list[bytes], boundary: str | None = None, *, close: bool = True) -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts)
    if close:
        body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(server: AxiomServer, body, content_type: str, *, key: str | None = KEY, path: str = "/studies",
         headers: dict | None = None) -> httpx.Response:
    hdrs = {"Content-Type": content_type, "Accept": "application/dicom+json", **(headers or {})}
    if key is not None:
        hdrs["X-API-Key"] = key
    return httpx.post(base_url(server) + path, content=body, headers=hdrs, timeout=120)


def uids_in(body: dict, seq: str) -> list[str]:
    return [item[SOP_UID].get("Value", [""])[0] for item in body.get(seq, {}).get("Value", [])]


def reasons(body: dict) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in body.get(FAILED, {}).get("Value", [])]


# --- dicomweb-client ----------------------------------------------------------------------


def test_dicomweb_client_stores_every_transfer_syntax_and_a_study(server, storescp, tmp_path):
    client = DICOMwebClient(base_url(server), headers={"X-API-Key": KEY})
    samples = [with_new_uids(get_testdata_file(name)) for name in SAMPLES]
    response = client.store_instances(samples)
    assert sorted(r.ReferencedSOPInstanceUID for r in response.ReferencedSOPSequence) == sorted(
        ds.SOPInstanceUID for ds in samples)
    assert "FailedSOPSequence" not in response

    # a generated study of 40 x 512x512 CT, sent in one request to its study URL (> 20 MB,
    # so dicomweb-client streams it with chunked transfer encoding)
    study = [dcmread(p) for p in make_ct_study(tmp_path / "study", 40)]
    response = client.store_instances(study, study_instance_uid=study[0].StudyInstanceUID)
    assert len(response.ReferencedSOPSequence) == 40

    sent = {ds.SOPInstanceUID: ds for ds in samples + study}
    wait_delivered(server, storescp, set(sent))
    out = archived(server)
    for uid, src in sent.items():
        got = dcmread(out[uid])
        assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert got.PixelData == src.PixelData, "pixel data must arrive byte for byte"
        assert got.PatientID == src.PatientID and got.StudyInstanceUID == src.StudyInstanceUID
    received = at_pacs(storescp)
    for uid in sent:
        assert received.count(uid) == 1, f"{uid} arrived {received.count(uid)} times at storescp"


def test_curl_style_single_application_dicom_body(server, storescp):
    ds = with_new_uids(get_testdata_file("CT_small.dcm"))
    r = post(server, part10(ds), "application/dicom", key=None, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/dicom+json"
    assert uids_in(r.json(), REFERENCED) == [ds.SOPInstanceUID]
    wait_delivered(server, storescp, {ds.SOPInstanceUID})


# --- bad input ------------------------------------------------------------------------------


def test_media_types_that_are_not_stow(server):
    ds = part10(with_new_uids(get_testdata_file("CT_small.dcm")))
    for content_type in ("text/plain", "application/octet-stream", "multipart/form-data; boundary=x"):
        r = post(server, ds, content_type)
        assert r.status_code == 415, (content_type, r.text)
        assert "unsupported media type" in r.json()["error"]
    body, _ = multipart([ds])
    r = post(server, body, 'multipart/related; type="application/dicom+json"; boundary=x')
    assert r.status_code == 415 and "application/dicom+json" in r.json()["error"]
    r = post(server, body, "multipart/related; type=\"application/dicom\"")
    assert r.status_code == 400 and "boundary" in r.json()["error"]
    r = post(server, b"", "application/dicom")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = httpx.post(base_url(server) + "/studies", content=ds, headers={"X-API-Key": KEY}, timeout=30)
    assert r.status_code == 415 and "Content-Type is missing" in r.json()["error"]


def test_body_that_is_not_multipart_is_400_and_stores_nothing(server, storescp):
    ds = with_new_uids(get_testdata_file("CT_small.dcm"))
    # declared multipart, but the body is a bare Part 10 file
    r = post(server, part10(ds), "multipart/related; type=\"application/dicom\"; boundary=abc123")
    assert r.status_code == 400 and "malformed multipart" in r.json()["error"]
    # framing cut off: a good part, then no closing delimiter
    body, ctype = multipart([part10(ds)], close=False)
    r = post(server, body, ctype)
    assert r.status_code == 400, r.text
    # none of it is stored: the client was told nothing got through
    server.wait_idle()
    assert ds.SOPInstanceUID not in archived(server)
    assert ds.SOPInstanceUID not in at_pacs(storescp)


def test_truncated_and_non_dicom_parts_fail_and_the_good_ones_arrive(server, storescp):
    good = [with_new_uids(get_testdata_file("CT_small.dcm")) for _ in range(3)]
    truncated = with_new_uids(get_testdata_file("MR_small.dcm"))
    cut = part10(truncated)
    cut = cut[: len(cut) // 2]
    jpeg = b"\xff\xd8\xff\xe0 this is a JPEG, not DICOM " * 50
    before = len(server.exceptions())
    body, ctype = multipart([part10(good[0]), cut, part10(good[1]), jpeg, part10(good[2])])
    r = post(server, body, ctype)
    assert r.status_code == 202, r.text
    result = r.json()
    assert sorted(uids_in(result, REFERENCED)) == sorted(ds.SOPInstanceUID for ds in good)
    # the truncated part is named by the UID of its file meta; the JPEG has none
    assert sorted(uids_in(result, FAILED)) == sorted(["", truncated.SOPInstanceUID])
    assert reasons(result) == [0xC000, 0xC000]

    wait_delivered(server, storescp, {ds.SOPInstanceUID for ds in good})
    assert truncated.SOPInstanceUID not in archived(server)
    received = at_pacs(storescp)
    assert all(received.count(ds.SOPInstanceUID) == 1 for ds in good)
    # the refused parts are kept, byte for byte, in quarantine with exception records
    records = [rec for rec in server.exceptions()[before:] if rec["stage"] == "stow"]
    assert len(records) == 2 and {rec["status"] for rec in records} == {"quarantined"}
    kept = sorted((server.data_dir / "blobs" / "quarantine" / rec["quarantined_as"].split("/", 3)[3].split("#")[0])
                  .read_bytes() for rec in records)
    assert kept == sorted([cut, jpeg])
    assert any("truncated or corrupt" in rec["reason"] for rec in records)


def test_all_parts_failing_is_409(server):
    body, ctype = multipart([b"not dicom", b""])
    r = post(server, body, ctype)
    assert r.status_code == 409, r.text
    assert reasons(r.json()) == [0xC000, 0xC000]
    assert REFERENCED not in r.json()


def test_study_instance_uid_must_match_the_url(server, storescp):
    study = generate_uid()
    inside = with_new_uids(get_testdata_file("CT_small.dcm"), study_uid=study)
    outside = with_new_uids(get_testdata_file("CT_small.dcm"))
    body, ctype = multipart([part10(inside), part10(outside)])
    r = post(server, body, ctype, path=f"/studies/{study}")
    assert r.status_code == 202, r.text
    assert uids_in(r.json(), REFERENCED) == [inside.SOPInstanceUID]
    assert uids_in(r.json(), FAILED) == [outside.SOPInstanceUID]
    assert reasons(r.json()) == [0xC409]

    body, ctype = multipart([part10(outside)])
    r = post(server, body, ctype, path=f"/studies/{study}")
    assert r.status_code == 409 and reasons(r.json()) == [0xC409]
    wait_delivered(server, storescp, {inside.SOPInstanceUID})
    assert outside.SOPInstanceUID not in archived(server)


def test_api_key_is_required(server):
    ds = with_new_uids(get_testdata_file("CT_small.dcm"))
    body, ctype = multipart([part10(ds)])
    r = post(server, body, ctype, key=None)
    assert r.status_code == 401 and "API key is required" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = post(server, body, ctype, key="first-key-0123456788")
    assert r.status_code == 401 and "not valid" in r.json()["error"]
    r = post(server, body, ctype, key=None, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = post(server, body, ctype, key="# a comment line")
    assert r.status_code == 401
    with pytest.raises(Exception) as err:  # dicomweb-client raises for the 401
        DICOMwebClient(base_url(server), headers={"X-API-Key": "wrong"}).store_instances([ds])
    assert "401" in str(err.value)
    r = post(server, body, ctype, key="first-key-0123456789")
    assert r.status_code == 200


def test_over_the_size_limit_is_413_and_stores_nothing(tmp_path):
    with AxiomServer(tmp_path / "data", config(max_request_bytes=300_000), env=ENV) as server:
        study = [part10(dcmread(p)) for p in make_ct_study(tmp_path / "study", 4, rows=256, columns=256)]
        body, ctype = multipart(study)  # ~530 KB
        assert len(body) > 300_000
        r = post(server, body, ctype)  # Content-Length says so up front
        assert r.status_code == 413 and "limit of 300000 bytes" in r.json()["error"]

        def chunks():  # no Content-Length: found out while streaming
            for n in range(0, len(body), 64 * 1024):
                yield body[n:n + 64 * 1024]

        r = post(server, chunks(), ctype)
        assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
        server.wait_idle()
        assert archived(server) == {}
        # under the limit it goes through
        body, ctype = multipart(study[:1])
        assert post(server, body, ctype).status_code == 200


def test_disabled(tmp_path):
    with AxiomServer(tmp_path / "data", config(enabled=False), env=ENV) as server:
        body, ctype = multipart([part10(with_new_uids(get_testdata_file("CT_small.dcm")))])
        r = post(server, body, ctype)
        assert r.status_code == 404 and "disabled" in r.json()["error"]


# --- memory -----------------------------------------------------------------------------------


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_200_mb_upload_is_streamed_not_held_in_memory(tmp_path):
    """400 x 512x512 CT (~210 MB) generated while it is sent, without Content-Length:
    the server's peak RSS must grow by far less than the body."""
    template = dcmread(make_ct_study(tmp_path / "one", 1)[0])
    root = "2.25." + str(uuid.uuid4().int)[:30]
    template.SOPInstanceUID = f"{root}.{100000}"
    template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
    data = part10(template)
    old = template.SOPInstanceUID.encode()
    count, boundary = 400, uuid.uuid4().hex

    def body():
        for n in range(count):
            # same-length UID: no length field changes, the file stays valid
            yield (b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                   + data.replace(old, f"{root}.{100000 + n}".encode()) + b"\r\n")
        yield b"--" + boundary.encode() + b"--\r\n"

    total = count * (len(data) + 100)
    assert total > 200 * 1024 * 1024
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with AxiomServer(tmp_path / "data", config(), env=ENV) as server:
        warm, wctype = multipart([part10(with_new_uids(get_testdata_file("CT_small.dcm")))])
        assert post(server, warm, wctype).status_code == 200
        before = vm_hwm_kb(server.proc.pid)
        r = post(server, body(), ctype)
        assert r.status_code == 200, r.text
        assert len(uids_in(r.json(), REFERENCED)) == count
        grown_mb = (vm_hwm_kb(server.proc.pid) - before) / 1024
        print(f"peak RSS grew by {grown_mb:.1f} MB for a {total / 2**20:.0f} MB body")
        assert grown_mb < 50, f"peak RSS grew by {grown_mb:.0f} MB for a {total / 2**20:.0f} MB body"
        # and all of them went on through the pipeline, once each
        status = server.wait_idle(180)
        assert status["deliveries"].get("delivered") == count + 1 and status["exceptions"] == 0  # + the warm-up
        assert len(list((server.data_dir / "out").rglob("*.dcm"))) == count + 1
