"""A large instance (256 MB, generated once for the module) through each destination
and input in memory bounded by a fixed buffer: the peak of Python's allocations
(tracemalloc) while it goes through stays under ``BOUND_MB`` and the process's resident
set grows by less than ``RSS_BOUND_MB``, and what arrives is checked byte for byte
against the source (the whole file, or the data set after the file meta where the peer
writes its own)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from shared.config import parse_config
from shared.destinations.cstore import CStoreSender
from shared.destinations.dicomweb import DicomWebSender
from shared.destinations.filesystem import FilesystemSender
from shared.dicom.io import sha256_file
from shared.errors import DeliveryRefused
from shared.inputs.pollers.dicomweb import DicomWebClient
from shared.inputs.pollers.types import InstanceRef
from tests.support.large import (
    PeakMemory,
    dataset_sha256,
    delivery_for,
    make_large_instance,
    pixel_data_digest,
    sop_instance_uid,
)
from tests.support.orthanc import Orthanc
from tests.support.procs import StoreSCP

pytestmark = pytest.mark.dcmtk

SIZE_MB = 256
BOUND_MB = 16  # the peak of Python allocations while one instance goes through
RSS_BOUND_MB = 32  # the peak resident set over the start: mapped pages, buffers, thread stacks


class Large:
    def __init__(self, path: Path, uid: str, length: int):
        self.path, self.uid, self.pixel_length = path, uid, length
        self.sha256, self.dataset_sha256 = sha256_file(path), dataset_sha256(path)
        ds = dcmread(path, stop_before_pixels=True)
        self.study_uid, self.series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Large:
    path = tmp_path_factory.mktemp("large") / "large.dcm"
    uid, length = make_large_instance(path, SIZE_MB)
    return Large(path, uid, length)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with Orthanc(tmp_path_factory.mktemp("orthanc") / "orthanc") as peer:
        yield peer


@pytest.fixture
def own_tmp(tmp_path, monkeypatch) -> Path:
    """The process's temporary directory, for this test alone (as serve sets it)."""
    tmp = tmp_path / "process-tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def destination(**spec):
    return parse_config({"destinations": [spec], "rulesets": []}).destination(spec["id"])


def stored_in_orthanc(orthanc: Orthanc, uid: str) -> list[Path]:
    """Orthanc's files (each instance as received, in its storage directory) of ``uid``:
    the large ones only, found by size first so that small files are not parsed."""
    files = [p for p in (orthanc.workdir / "storage").rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
    return [p for p in files if sop_instance_uid(p) == uid]


def assert_same_data_set(large: Large, path: Path) -> None:
    assert sop_instance_uid(path) == large.uid
    assert pixel_data_digest(path)[0] == large.pixel_length
    assert dataset_sha256(path) == large.dataset_sha256


# --- destinations -----------------------------------------------------------------------


def test_filesystem_destination_places_a_large_instance_in_bounded_memory(large, tmp_path):
    sender = FilesystemSender(destination(id="fs", type="filesystem", path=str(tmp_path / "out")), tmp_path)
    with PeakMemory() as peak:
        where = sender.send(large.path, delivery_for(large.path, "fs"))
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    placed = Path(where)
    assert placed.parent.parent.parent == tmp_path / "out" and sha256_file(placed) == large.sha256


def test_filesystem_conflict_check_hashes_the_existing_file_in_bounded_memory(large, tmp_path):
    from shared.dicom.io import content_digest

    sender = FilesystemSender(destination(id="fs", type="filesystem", path=str(tmp_path / "out")), tmp_path)
    digest = content_digest(large.path)
    where = sender.send(large.path, delivery_for(large.path, "fs", digest))
    with PeakMemory() as peak:
        again = sender.send(large.path, delivery_for(large.path, "fs", digest))
        with pytest.raises(DeliveryRefused, match="different data set"):
            sender.send(large.path, delivery_for(large.path, "fs", "f" * 64))
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    assert again == f"{where} (already there)"


def test_cstore_destination_sends_a_large_instance_in_bounded_memory(large, tmp_path):
    with StoreSCP(tmp_path / "storescp") as scp:
        sender = CStoreSender(destination(id="scp", type="cstore", ae_title=scp.ae_title, host="127.0.0.1",
                                          port=scp.port, timeout_s=300), None)
        try:
            with PeakMemory() as peak:
                sender.send(large.path, delivery_for(large.path, "scp"))
        finally:
            sender.close()
        received = [p for p in scp.out_dir.iterdir() if p.is_file()]
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    assert len(received) == 1
    assert_same_data_set(large, received[0])


def test_stow_rs_destination_posts_a_large_instance_in_bounded_memory(large, orthanc):
    sender = DicomWebSender(destination(id="pacs", type="dicomweb", url=orthanc.dicomweb, timeout_s=300), None)
    try:
        with PeakMemory() as peak:
            sender.send(large.path, delivery_for(large.path, "pacs"))
    finally:
        sender.close()
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    stored = stored_in_orthanc(orthanc, large.uid)
    assert len(stored) == 1
    assert_same_data_set(large, stored[0])


def test_stow_rs_conflict_check_spools_the_peer_copy_in_bounded_memory(large, orthanc, own_tmp):
    """The peer's copy (Orthanc's, by WADO-RS) is streamed to a temporary file and hashed
    from there: the same data set is recognised, another digest is not, and no
    temporary file is left either way."""
    from shared.dicom.io import content_digest

    sender = DicomWebSender(destination(id="pacs", type="dicomweb", url=orthanc.dicomweb, timeout_s=300), None)
    try:
        if not stored_in_orthanc(orthanc, large.uid):
            sender.send(large.path, delivery_for(large.path, "pacs"))
        same = delivery_for(large.path, "pacs", content_digest(large.path))
        with PeakMemory() as peak:
            assert sender._same_as_stored(large.path, same)
            assert not sender._same_as_stored(large.path, delivery_for(large.path, "pacs", "f" * 64))
    finally:
        sender.close()
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    assert list(own_tmp.iterdir()) == []


# --- inputs ---------------------------------------------------------------------------------


def test_wado_rs_retrieval_spools_a_large_instance_in_bounded_memory(large, orthanc, tmp_path):
    if not stored_in_orthanc(orthanc, large.uid):
        r = httpx.post(f"{orthanc.url}/instances", content=file_chunks(large.path), timeout=300)
        assert r.status_code == 200
    client = DicomWebClient(orthanc.dicomweb, timeout_s=300, tmp_dir=tmp_path)
    ref = InstanceRef(large.study_uid, large.series_uid, large.uid, "")
    try:
        with PeakMemory() as peak:
            retrieved = client.retrieve_instance(ref)
    finally:
        client.close()
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    assert retrieved.parent == tmp_path
    assert_same_data_set(large, retrieved)


class StowServer:
    """The HTTP server and STOW-RS app of ``axiom-flow serve``, in this process (so
    tracemalloc sees the server's allocations), over the local adapters."""

    KEY = "large-key-0123456789abcdef"

    def __init__(self, tmp_path: Path, monkeypatch):
        from shared.http import HttpServer, create_app
        from tests.support.stageports import build_ports

        monkeypatch.setenv("AXIOM_TEST_LARGE_STOW_KEYS", self.KEY)
        self.ports = build_ports(tmp_path, {
            "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
            "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
            "stow": {"api_keys": "env:AXIOM_TEST_LARGE_STOW_KEYS", "max_request_bytes": 1 << 30}})
        self.server = HttpServer(create_app(self.ports, status=dict), "127.0.0.1", 0, max_request_body=1 << 30)
        self.url = f"http://127.0.0.1:{self.server.port}/dicomweb/studies"

    def __enter__(self) -> "StowServer":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def post(self, body, content_type: str) -> httpx.Response:
        headers = {"X-API-Key": self.KEY, "Content-Type": content_type, "Accept": "application/dicom+json"}
        return httpx.post(self.url, content=body, headers=headers, timeout=300)

    def ingested(self) -> dict[str, Path]:
        """SOP Instance UID -> the ingest object's file, for every object stored."""
        out = {}
        for event in self.ports.events:
            with self.ports.blobs.local_path(event.blob) as path:
                out[sop_instance_uid(path)] = path
        return out


def file_chunks(*pieces: bytes | Path):
    """A request body from bytes and files, the files read 1 MiB at a time."""
    for piece in pieces:
        if isinstance(piece, Path):
            with open(piece, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk
        else:
            yield piece


def test_stow_rs_input_takes_a_large_single_part_body_in_bounded_memory(large, tmp_path, monkeypatch):
    with StowServer(tmp_path, monkeypatch) as stow:
        with PeakMemory() as peak:
            answer = stow.post(file_chunks(large.path), "application/dicom")
        assert answer.status_code == 200, answer.text
        assert [i["00081155"]["Value"][0] for i in answer.json()["00081199"]["Value"]] == [large.uid]
        ingested = stow.ingested()
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    assert list(ingested) == [large.uid] and sha256_file(ingested[large.uid]) == large.sha256


def test_stow_rs_input_takes_a_large_multipart_body_in_bounded_memory(large, tmp_path, monkeypatch):
    small = get_testdata_file("CT_small.dcm")
    small_uid = sop_instance_uid(Path(small))
    boundary = "large-instance-boundary"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = file_chunks(head, large.path, b"\r\n", head, Path(small), b"\r\n", f"--{boundary}--\r\n".encode())
    with StowServer(tmp_path, monkeypatch) as stow:
        with PeakMemory() as peak:
            answer = stow.post(body, f'multipart/related; type="application/dicom"; boundary={boundary}')
        assert answer.status_code == 200, answer.text
        stored = sorted(i["00081155"]["Value"][0] for i in answer.json()["00081199"]["Value"])
        assert stored == sorted([large.uid, small_uid])
        ingested = stow.ingested()
    assert peak.python_mb < BOUND_MB and peak.rss_mb < RSS_BOUND_MB, (peak.python_mb, peak.rss_mb)
    assert sorted(ingested) == stored
    assert sha256_file(ingested[large.uid]) == large.sha256
    assert sha256_file(ingested[small_uid]) == sha256_file(Path(small))
