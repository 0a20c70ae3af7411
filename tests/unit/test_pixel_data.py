"""Native Pixel Data shorter than its image is refused at match (an image cut off by
its sender), from the element's length alone; padding, encapsulated Pixel Data and
images whose attributes say nothing pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from shared import exceptions, stages
from shared.dicom.io import read_instance
from shared.dicom.pixel_data import expected_length, shortfall
from tests.support.stageports import config, ingest

CT = Path(get_testdata_file("CT_small.dcm"))  # 128 x 128, 16 bits: 32768 bytes


def image(**attributes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = attributes.pop("syntax", ExplicitVRLittleEndian)
    ds.update({"Rows": 4, "Columns": 5, "SamplesPerPixel": 1, "BitsAllocated": 16, **attributes})
    return ds


@pytest.mark.parametrize("attributes, length", [
    ({}, 40),
    ({"NumberOfFrames": 3}, 120),
    ({"SamplesPerPixel": 3, "BitsAllocated": 8, "PhotometricInterpretation": "RGB"}, 60),
    ({"SamplesPerPixel": 3, "BitsAllocated": 8, "PhotometricInterpretation": "YBR_FULL_422"}, 40),
    ({"BitsAllocated": 1, "Rows": 3, "Columns": 3}, 2),  # 9 bits packed into 2 bytes (even)
    ({"BitsAllocated": 8, "Rows": 3, "Columns": 3}, 10),  # 9 bytes, padded to even
    ({"Rows": None}, None),
    ({"NumberOfFrames": 0}, None),
])
def test_expected_length(attributes, length):
    assert expected_length(image(**attributes)) == length


def test_short_native_pixel_data_is_named_and_enough_or_more_passes():
    assert shortfall(image(PixelData=bytes(38))) == (
        "Pixel Data holds 38 bytes, fewer than the 40 that Rows, Columns, Samples per Pixel, Bits Allocated and "
        "Number of Frames call for (PS3.5 8.1.1): the image is truncated")
    assert shortfall(image(PixelData=bytes(40))) is None
    assert shortfall(image(PixelData=bytes(42))) is None  # trailing padding some writers add
    assert shortfall(image()) is None  # no Pixel Data
    assert shortfall(image(PixelData=bytes(2), syntax=JPEGBaseline8Bit)) is None  # encapsulated: frames vary


def test_a_truncated_image_is_quarantined_at_match_with_the_reason(make_ports, tmp_path):
    ds = dcmread(CT)
    ds.PixelData = ds.PixelData[:16000]
    ds.save_as(tmp_path / "cut.dcm")
    assert read_instance(tmp_path / "cut.dcm") is not None  # a well-formed file: only its image is short
    ports = make_ports(config({"id": "all", "destinations": ["archive"]}))
    assert stages.match(ports, ingest(ports, tmp_path / "cut.dcm")) is None
    [record] = ports.docs.list(exceptions.EXCEPTIONS).values()
    assert record["status"] == "quarantined" and record["stage"] == "match"
    assert record["reason"].startswith("Pixel Data holds 16000 bytes, fewer than the 32768")
    assert not list((tmp_path / "out").rglob("*.dcm"))
