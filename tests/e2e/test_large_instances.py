"""1 GB instances through ``axiom-flow serve``: one sent by dcmtk's storescu (C-STORE),
one by STOW-RS, each changed by a rule (so morph writes a new object) and routed to a
folder, a dcmtk storescp and Orthanc's STOW-RS. Each destination ends with one file per
instance holding its UID and, byte for byte, its Pixel Data; no process of the runtime
grows with the instance. The peak RSS is recorded in the test report (and printed)."""

from __future__ import annotations

import httpx
import pytest
from pydicom import dcmread

from shared.dicomweb.multipart import new_boundary, parts_length, related_content_type, write_parts
from tests.support.large import make_large_instance, pixel_data_digest
from tests.support.orthanc import Orthanc
from tests.support.procs import AxiomServer, StoreSCP, storescu, wait_for
from tests.support.procstats import PeakRss

SIZE_MB = 1024
STOW_KEY = "large-instances-key"
# the largest process of the runtime, whatever the instance's size: a Python process
# with pydicom, pynetdicom and the HTTP stack loaded is ~90 MB idle
LARGEST_PROCESS_MB = 150


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    """Two generated 1 GB instances: (path, SOP Instance UID, Pixel Data digest)."""
    folder = tmp_path_factory.mktemp("large")
    made = []
    for name in ("cstore", "stow"):
        path = folder / f"{name}.dcm"
        uid, _ = make_large_instance(path, SIZE_MB)
        made.append((path, uid, pixel_data_digest(path)))
    yield made
    for path, _, _ in made:
        path.unlink()


def _delivered(server) -> int:
    return server.status()["deliveries"].get("delivered", 0)


def _only_file_of(folder, uid: str):
    found = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 1024 * 1024
             and dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid]
    assert len(found) == 1, f"{folder}: {len(found)} files of {uid}"
    return found[0]


def test_large_instances_by_cstore_and_stow_reach_every_destination_intact(tmp_path, instances, record_property):
    storescp = StoreSCP(tmp_path / "storescp").start()
    orthanc = Orthanc(tmp_path / "orthanc").start()
    config = {
        "destinations": [
            {"id": "folder", "type": "filesystem", "path": str(tmp_path / "folder")},
            {"id": "pacs", "type": "cstore", "ae_title": storescp.ae_title, "host": "127.0.0.1",
             "port": storescp.port, "timeout_s": 300},
            {"id": "web", "type": "dicomweb", "url": orthanc.dicomweb, "timeout_s": 300},
        ],
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["folder", "pacs", "web"], "actions": [
            {"action": "set", "tag": "InstitutionName", "value": "AXIOM LARGE"}]}]}],
        "stow": {"api_keys": "env:AXIOM_TEST_STOW_KEYS"},
    }
    (by_cstore, by_stow) = instances
    try:
        with AxiomServer(tmp_path / "data", config, env={"AXIOM_TEST_STOW_KEYS": STOW_KEY}) as server, \
                PeakRss(server.proc.pid) as rss:
            storescu(server.dicom_port, [by_cstore[0]], extra=["--max-pdu", "131072"], timeout=600)
            boundary = new_boundary()
            stow = httpx.post(f"http://127.0.0.1:{server.http_port}/dicomweb/studies",
                              content=write_parts([by_stow[0]], boundary), timeout=600,
                              headers={"Content-Type": related_content_type(boundary), "X-API-Key": STOW_KEY,
                                       "Content-Length": str(parts_length([by_stow[0]], boundary))})
            assert stow.status_code == 200, stow.text
            wait_for(lambda: _delivered(server) == 6 or server.exceptions(), 900, what="six deliveries")
            assert server.exceptions() == []
            server.wait_idle()
    finally:
        storescp.stop()
        orthanc.stop()
    record_property("peak_rss_mb_all_processes", round(rss.peak))
    record_property("peak_rss_mb_largest_process", round(rss.largest))
    print(f"peak RSS: {rss.peak:.0f} MB all processes, {rss.largest:.0f} MB the largest")

    for _, uid, pixels in instances:
        for folder in (tmp_path / "folder", tmp_path / "storescp", tmp_path / "orthanc" / "storage"):
            out = _only_file_of(folder, uid)
            assert pixel_data_digest(out) == pixels, out
            assert dcmread(out, stop_before_pixels=True).InstitutionName == "AXIOM LARGE"
    assert rss.largest < LARGEST_PROCESS_MB, f"a process of the runtime peaked at {rss.largest:.0f} MB"
