"""Large instances through match and morph: memory follows the header, not the pixel
data. A 256 MB instance is parsed, checked, changed (spliced, or re-encoded by pydicom
when the character set changes) and hashed while this process grows by a few MB, and
its Pixel Data arrives byte for byte. What cannot be done in bounded memory is refused
with a reason that says so."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

from shared import exceptions, stages
from shared.dicom import io, splice
from shared.dicom.io import content_digest, read_instance, write_instance
from shared.dicom.splice import reencode_chunks, write_morphed
from shared.errors import Unprocessable
from tests.support.dicomgen import make_ct_study
from tests.support.large import PeakMemory, make_large_instance, pixel_data_digest
from tests.support.stageports import config, ingest

MB = 1024 * 1024
SIZE_MB = 256
# what match + morph + the digest of a large instance may add to this process: its
# header, the copy buffer, the walk's element list, allocator noise
BOUND_MB = 24


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("large") / "large.dcm"
    make_large_instance(path, SIZE_MB, charset="ISO_IR 100", patient_name="Muller^Jorg")
    return path


def _processed(ports, delivery) -> Path:
    with ports.blobs.local_path(delivery.blob) as path:
        return Path(path)


@pytest.mark.parametrize("value, charset", [
    ("SPLICED", "ISO_IR 100"),  # fits the character set: the splice copies everything else
    ("Αθήνα", "ISO_IR 192"),  # Greek: converted to UTF-8, pydicom re-encodes all but the pixel data
], ids=["splice", "reencode"])
def test_match_and_morph_hold_the_header_not_the_pixel_data(make_ports, large, value, charset):
    ports = make_ports(config({"id": "r", "actions": [{"action": "set", "tag": "InstitutionName", "value": value}],
                               "destinations": ["archive"]}))
    event = ingest(ports, large)
    with PeakMemory() as peak:
        plan = stages.match(ports, event)
        [delivery] = stages.morph(ports, plan)
    assert peak.python_mb < BOUND_MB and peak.rss_mb < BOUND_MB, (peak.python_mb, peak.rss_mb)

    out = _processed(ports, delivery)
    got = dcmread(out, stop_before_pixels=True)
    assert got.InstitutionName == value and got.SpecificCharacterSet == charset
    assert got.PatientName == "Muller^Jorg"  # existing text kept its characters
    assert pixel_data_digest(out) == pixel_data_digest(large)
    assert delivery.sha256 == content_digest(out)


def test_route_to_a_folder_copies_in_bounded_memory(make_ports, large, tmp_path):
    ports = make_ports(config({"id": "r", "destinations": ["archive"]}))
    plan = stages.match(ports, ingest(ports, large))
    [delivery] = stages.morph(ports, plan)  # no actions: the received object is delivered
    with PeakMemory() as peak:
        assert stages.route(ports, delivery) == "delivered"
    assert peak.python_mb < BOUND_MB and peak.rss_mb < BOUND_MB, (peak.python_mb, peak.rss_mb)
    [out] = (tmp_path / "out").rglob("*.dcm")
    assert pixel_data_digest(out) == pixel_data_digest(large)


def test_content_digest_of_a_file_is_that_of_its_bytes(tmp_path):
    [path] = make_ct_study(tmp_path, 1)
    assert content_digest(path) == content_digest(path.read_bytes())
    assert content_digest(path) != content_digest(path.read_bytes()[:-2])


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_reencoding_around_unread_values_writes_what_pydicom_writes(tmp_path, implicit):
    """The write morph falls back to (a character set change) is byte for byte the file
    pydicom writes having read everything, Pixel Data copied from the source."""
    [path] = make_ct_study(tmp_path, 1)
    if implicit:
        ds = dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
        ds.save_as(path, enforce_file_format=True)
    actions = lambda ds: (ds.__setattr__("SpecificCharacterSet", "ISO_IR 192"),  # noqa: E731
                          ds.__setattr__("InstitutionName", "Αθήνα"))
    ds = read_instance(path)
    assert "PixelData" in ds and ds.get_item("PixelData", keep_deferred=True).value is None  # never read
    actions(ds)
    chunks = reencode_chunks(path, ds)
    assert chunks is not None and any(isinstance(chunk, tuple) for chunk in chunks)  # pixel data copied
    write_morphed(path, ds, tmp_path / "morphed.dcm")

    expected = dcmread(path)
    expected.PixelData  # noqa: B018 - read, as pydicom alone would
    actions(expected)
    write_instance(expected, tmp_path / "expected.dcm")
    assert (tmp_path / "morphed.dcm").read_bytes() == (tmp_path / "expected.dcm").read_bytes()


def test_values_that_cannot_be_copied_by_position_are_read_up_to_a_limit(make_ports, tmp_path, monkeypatch):
    """Without complete file meta the splice does not apply, and pydicom re-encodes the
    instance: the Pixel Data is still copied, but a large text value is read into
    memory, up to MAX_VALUES_IN_MEMORY; beyond it the instance is refused, saying why."""
    [path] = make_ct_study(tmp_path / "in", 1)
    ds = dcmread(path)
    del ds.file_meta.FileMetaInformationVersion
    ds.TextValue = "x" * (io.DEFER_BYTES + 1000)  # UT, deferred when read
    ds.save_as(path, enforce_file_format=False)
    monkeypatch.setattr(splice, "MAX_VALUES_IN_MEMORY", io.DEFER_BYTES)
    ports = make_ports(config({"id": "r", "actions": [{"action": "set", "tag": "InstitutionName", "value": "X"}],
                               "destinations": ["archive"]}))
    plan = stages.match(ports, ingest(ports, path))
    assert stages.morph(ports, plan) == []
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert record["status"] == "quarantined" and record["stage"] == "morph"
    assert record["reason"] == ("the changed instance cannot be written without reading 65 KB of its values into "
                                "memory (they cannot be copied from the received file as they are), more than the "
                                "64 KB allowed")

    monkeypatch.setattr(splice, "MAX_VALUES_IN_MEMORY", 256 * MB)  # within the limit: written
    plan = stages.match(ports, ingest(ports, path))
    [delivery] = stages.morph(ports, plan)
    out = _processed(ports, delivery)
    got = dcmread(out)
    assert got.TextValue == "x" * (io.DEFER_BYTES + 1000) and got.InstitutionName == "X"
    assert pixel_data_digest(out) == pixel_data_digest(path)


def test_a_deflated_data_set_inflating_beyond_the_limit_is_quarantined(make_ports, tmp_path, monkeypatch):
    [path] = make_ct_study(tmp_path / "in", 1)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    monkeypatch.setattr(io, "MAX_INFLATED_BYTES", 256 * 1024)  # the instance inflates to ~530 KB
    ports = make_ports(config({"id": "r", "destinations": ["archive"]}))
    assert stages.match(ports, ingest(ports, path)) is None
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert record["status"] == "quarantined"
    assert record["reason"] == ("the deflated data set inflates to more than 256 KB, the most this router inflates "
                                "in memory; send it in a transfer syntax that is not deflated")
    with pytest.raises(Unprocessable, match="corrupt"):
        io.inflate(zlib.compress(b"x" * 100)[2:-8][:20])
