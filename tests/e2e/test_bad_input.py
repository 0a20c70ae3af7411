"""Bad input over C-STORE: stored, then quarantined with a reason; nothing crashes and
good instances keep flowing."""

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from tests.support.procs import AxiomServer, storescu


def send_raw(port: int, path: Path) -> int:
    """C-STORE a Part 10 file as it is on disk, without pydicom decoding it, the way a
    broken modality would send broken bytes (pynetdicom's chunked send)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
    ae = AE(ae_title="BROKENMOD")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="AXIOM")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path).Status
    finally:
        assoc.release()


def garbage_instance(path: Path) -> Path:
    """Valid file meta, then bytes that are no DICOM dataset at all."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        fh.write(b"\xff\xfe this is a JPEG, not a dataset " * 40)
    return path


def truncated_instance(path: Path) -> Path:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def dataset_bytes(path: Path) -> bytes:
    meta = read_file_meta_info(path)
    return path.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength:]


def test_non_dicom_and_truncated_over_store_are_quarantined(tmp_path):
    config = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}]}
    with AxiomServer(tmp_path / "data", config) as server:
        assert send_raw(server.dicom_port, garbage_instance(tmp_path / "garbage.dcm")) == 0x0000
        assert send_raw(server.dicom_port, truncated_instance(tmp_path / "truncated.dcm")) == 0x0000
        storescu(server.dicom_port, [get_testdata_file("CT_small.dcm")])
        status = server.wait_idle()

        assert status["exceptions"] == 2
        quarantined = list((server.data_dir / "blobs" / "quarantine").rglob("*.dcm"))
        assert len(quarantined) == 2
        # the bytes as sent are kept (the file meta is the gateway's own, PS3.10 7.1)
        assert sorted(dataset_bytes(p) for p in quarantined) == sorted(
            dataset_bytes(tmp_path / name) for name in ("garbage.dcm", "truncated.dcm"))
        records = server.exceptions()
        assert {r["status"] for r in records} == {"quarantined"}
        # the garbage bytes read as an element with the VR "hi" (from "this")
        assert sorted(r["reason"].split(":")[0] for r in records) == [
            "element (FEFF,7420) has an invalid value representation 'hi' (PS3.5 6.2)", "truncated or corrupt"]
        # the good instance still went through
        assert len(list((server.data_dir / "out").rglob("*.dcm"))) == 1


def invalid_vr_instance(path: Path) -> Path:
    """CT_small with Station Name (0008,1010) encoded with the VR 'GA', which PS3.5 6.2
    does not define (a 16-bit length, as pydicom and the old check assumed). dcmtk's
    storescu cannot send this: it re-encodes an unknown VR as UN, so it is sent raw."""
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.index(b"\x08\x00\x10\x10SH")
    data[at + 4:at + 6] = b"GA"
    path.write_bytes(bytes(data))
    return path


def test_invalid_vr_and_non_dicom_are_quarantined_with_plain_reasons(tmp_path):
    import httpx

    config = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
              "stow": {"api_keys": "env:AXIOM_TEST_STOW_KEYS"}}
    bad = invalid_vr_instance(tmp_path / "invalid-vr.dcm")
    with AxiomServer(tmp_path / "data", config, env={"AXIOM_TEST_STOW_KEYS": "key-0123456789"}) as server:
        assert send_raw(server.dicom_port, bad) == 0x0000  # stored first, judged after
        answer = httpx.post(f"http://127.0.0.1:{server.http_port}/dicomweb/studies", content=b"%PDF-1.4 a report\n" * 20,
                            headers={"X-API-Key": "key-0123456789", "Content-Type": "application/dicom"}, timeout=30)
        assert answer.status_code == 409
        good = tmp_path / "good.dcm"
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = generate_uid()  # not the invalid one's
        ds.save_as(good)
        storescu(server.dicom_port, [good])
        status = server.wait_idle()

        assert status["exceptions"] == 2
        reasons = sorted(r["reason"] for r in server.exceptions())
        assert reasons == ["STOW-RS part 1 refused (0xC000): not a DICOM Part 10 file: no 'DICM' prefix at byte 128 "
                           "(PS3.10 7.1)", "element (0008,1010) has an invalid value representation 'GA' (PS3.5 6.2)"]
        assert {r["status"] for r in server.exceptions()} == {"quarantined"}
        quarantined = sorted((server.data_dir / "blobs" / "quarantine").rglob("*.dcm"))
        assert dataset_bytes(bad) in [dataset_bytes(p) for p in quarantined if p.read_bytes()[128:132] == b"DICM"]
        # only the good instance was delivered, and not the one with the invalid VR
        delivered = list((server.data_dir / "out").rglob("*.dcm"))
        assert [dcmread(p).SOPInstanceUID for p in delivered] == [dcmread(good).SOPInstanceUID]
