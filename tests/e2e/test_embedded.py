"""The embedded runtime end to end, with dcmtk on both sides: storescu sends into
``axiom-flow serve``, which morphs and delivers to a folder and to storescp."""

import shutil
import subprocess
from pathlib import Path

from pydicom import dcmread

from tests.support.dicomgen import make_ct_study
from tests.support.procs import DCMTK_ENV, AxiomServer, require, storescu, wait_for

INSTITUTION = "AXIOM ROUTED"


def router_config(storescp) -> dict:
    return {
        "destinations": [
            {"id": "archive", "type": "filesystem", "path": "out"},
            {"id": "pacs", "type": "cstore", "ae_title": storescp.ae_title, "host": "127.0.0.1",
             "port": storescp.port, "retry": {"max_attempts": 3, "initial_backoff_s": 0.2}},
        ],
        "rulesets": [{
            "id": "main",
            "rules": [{
                "id": "all",
                "actions": [{"action": "set", "tag": "InstitutionName", "value": INSTITUTION}],
                "destinations": ["archive", "pacs"],
            }],
        }],
    }


def archived(server: AxiomServer) -> dict[str, Path]:
    root = server.data_dir / "out"
    return {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in root.rglob("*.dcm")}


def assert_routed(source: Path, delivered: Path, ts_expected: str) -> None:
    src, out = dcmread(source), dcmread(delivered)
    assert out.SOPInstanceUID == src.SOPInstanceUID
    assert out.InstitutionName == INSTITUTION
    assert out.file_meta.TransferSyntaxUID == ts_expected
    assert out.PixelData == src.PixelData, "pixel data must be carried through byte for byte"
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        assert out.get(keyword) == src.get(keyword), keyword


def test_every_transfer_syntax_is_routed_unchanged(tmp_path, storescp, ts_samples):
    with AxiomServer(tmp_path / "data", router_config(storescp)) as server:
        for name, (path, opts) in ts_samples.items():
            storescu(server.dicom_port, [path], extra=opts)
        status = server.wait_idle()
        assert status["exceptions"] == 0
        by_uid = archived(server)
        assert len(by_uid) == len(ts_samples)
        at_pacs = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in storescp.files()}
        for name, (path, _) in ts_samples.items():
            src = dcmread(path, stop_before_pixels=True)
            ts = src.file_meta.TransferSyntaxUID
            assert_routed(path, by_uid[src.SOPInstanceUID], ts)
            assert_routed(path, at_pacs[src.SOPInstanceUID], ts)
        assert storescp.received_count() == len(ts_samples)


def test_study_of_200_instances(tmp_path, storescp):
    files = make_ct_study(tmp_path / "study", 200, rows=256, columns=256)
    with AxiomServer(tmp_path / "data", router_config(storescp)) as server:
        result = storescu(server.dicom_port, files)
        assert result.stdout.count(b"Received Store Response (Success)") + result.stderr.count(
            b"Received Store Response (Success)") == 200
        wait_for(lambda: storescp.received_count() >= 200, 120, what="200 instances at storescp")
        server.wait_idle()
        by_uid = archived(server)
        at_pacs = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in storescp.files()}
        for path in files:
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert_routed(path, by_uid[uid], "1.2.840.10008.1.2.1")
            assert_routed(path, at_pacs[uid], "1.2.840.10008.1.2.1")
        assert storescp.received_count() == 200
        assert server.status()["deliveries"]["delivered"] == 400


def test_redelivered_and_resent_instances_are_not_delivered_twice(tmp_path, storescp):
    files = make_ct_study(tmp_path / "study", 3, rows=64, columns=64)
    with AxiomServer(tmp_path / "data", router_config(storescp)) as server:
        storescu(server.dicom_port, files)
        server.wait_idle()
        assert storescp.received_count() == 3
        # The modality sends the same instances again: same bytes, same morph, same
        # idempotency keys, so the ledger acknowledges them without sending.
        storescu(server.dicom_port, files)
        server.wait_idle()
        assert storescp.received_count() == 3
        assert server.status()["deliveries"]["delivered"] == 6


def test_echo_and_store_failure_answers_a700_and_keeps_nothing(tmp_path, storescp):
    files = make_ct_study(tmp_path / "study", 2, rows=64, columns=64)
    with AxiomServer(tmp_path / "data", router_config(storescp)) as server:
        echo = subprocess.run([require("echoscu"), "-aec", "AXIOM", "127.0.0.1", str(server.dicom_port)],
                              capture_output=True, env=DCMTK_ENV, timeout=30)
        assert echo.returncode == 0, echo.stderr
        # the ingest store cannot be written: the gateway must not answer Success
        ingest = server.data_dir / "blobs" / "ingest"
        shutil.rmtree(ingest, ignore_errors=True)
        ingest.write_text("not a directory")
        failed = storescu(server.dicom_port, files[:1], check=False, extra=["-nh"])
        log = failed.stdout + failed.stderr
        assert b"Received Store Response (Success)" not in log
        assert b"Refused: OutOfResources" in log, log.decode()  # 0xA700
        ingest.unlink()
        storescu(server.dicom_port, files)
        server.wait_idle()
        assert storescp.received_count() == 2
