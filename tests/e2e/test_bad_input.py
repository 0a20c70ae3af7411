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
        assert all("truncated or corrupt" in r["reason"] for r in records)
        # the good instance still went through
        assert len(list((server.data_dir / "out").rglob("*.dcm"))) == 1
