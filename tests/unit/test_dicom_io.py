"""The structure check and read_instance's reasons: an explicit VR must be one of PS3.5
section 6.2, and what is not a Part 10 file is said in plain terms (PS3.10 section 7.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian
from pydicom.valuerep import STANDARD_VR

from shared.dicom.io import check_complete, read_instance, top_level_spans
from shared.errors import Unprocessable


def _with_vr(src: Path, dst: Path, header: bytes, vr: bytes, *, after: bytes = b"") -> Path:
    """``src`` with the VR of the element whose explicit header starts with ``header``
    (tag bytes + VR) replaced by ``vr``; the first one after ``after`` if given."""
    data = bytearray(src.read_bytes())
    start = data.index(after) if after else 0
    at = data.index(header, start)
    data[at + 4:at + 6] = vr
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture
def ct(tmp_path) -> Path:
    """CT_small (explicit VR little endian) with a sequence, saved as pydicom writes it."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedStudySequence = [item]
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    check_complete(path)
    return path


@pytest.mark.parametrize("vr", [b"GA", b"XX", b"ZZ"])
def test_an_invalid_vr_at_the_top_level_is_refused_with_the_element_named(ct, tmp_path, vr):
    bad = _with_vr(ct, tmp_path / "bad.dcm", b"\x08\x00\x10\x10SH", vr)  # StationName
    expected = f"element (0008,1010) has an invalid value representation '{vr.decode()}' (PS3.5 6.2)"
    with pytest.raises(Unprocessable) as raised:
        check_complete(bad)
    assert str(raised.value) == expected
    with pytest.raises(Unprocessable) as raised:
        read_instance(bad)
    assert str(raised.value) == expected
    offset = 144 + int.from_bytes(bad.read_bytes()[140:144], "little")
    with pytest.raises(Unprocessable) as raised:
        top_level_spans(bad.read_bytes(), offset, dcmread(bad, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert str(raised.value) == expected


def test_an_invalid_vr_inside_a_sequence_item_is_refused(ct, tmp_path):
    bad = _with_vr(ct, tmp_path / "bad.dcm", b"\x08\x00\x55\x11UI", b"GA", after=b"\x08\x00\x10\x11SQ")
    with pytest.raises(Unprocessable, match=r"^element \(0008,1155\) has an invalid value representation 'GA'"):
        read_instance(bad)


def test_an_invalid_vr_in_big_endian_is_refused(tmp_path):
    src = Path(get_testdata_file("MR_small_bigendian.dcm"))
    assert dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    check_complete(src)
    bad = _with_vr(src, tmp_path / "bad.dcm", b"\x00\x08\x10\x10SH", b"GA")
    with pytest.raises(Unprocessable, match=r"^element \(0008,1010\) has an invalid value representation 'GA'"):
        check_complete(bad)


def test_every_standard_vr_passes(tmp_path):
    """One element of each PS3.5 6.2 VR, written by pydicom, walks cleanly."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    values = {"AT": 0x00100010, "FL": 1.5, "FD": 1.5, "SL": -1, "SS": -1, "UL": 1, "US": 1, "SV": -1, "UV": 1,
              "OB": b"\0\1", "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4, "OV": b"\0" * 8, "OW": b"\0\1",
              "SQ": [], "UN": b"\0\1", "DA": "20240101", "DT": "20240101120000", "TM": "120000", "DS": "1.5",
              "IS": "7", "AS": "030Y", "PN": "Doe^J", "UR": "http://example.org", "UI": "1.2.3"}
    for n, vr in enumerate(sorted(STANDARD_VR)):
        ds.add_new(0x00091000 | (0x10 + n), vr.value, values.get(vr.value, "TEXT"))
    ds.add_new(0x00090010, "LO", "AXIOM TEST")
    path = tmp_path / "all.dcm"
    ds.save_as(path)
    check_complete(path)
    assert {ds[t].VR for t in ds.keys() if t.group == 9 and t.element >= 0x1000} == {vr.value for vr in STANDARD_VR}


def test_an_implicit_dataset_under_an_explicit_syntax_is_explained():
    # pydicom's own sample: file meta says JPEG Baseline (explicit VR), the dataset is implicit VR
    with pytest.raises(Unprocessable, match="may be encoded in implicit VR although its transfer syntax is explicit"):
        read_instance(Path(get_testdata_file("SC_rgb_jpeg.dcm")))


@pytest.mark.parametrize("stop_before_pixels", [False, True])
def test_not_part10_reasons_are_plain(tmp_path, stop_before_pixels):
    text = tmp_path / "notes.txt"
    text.write_bytes(b"Patient notes, not an image\n" * 20)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(Unprocessable) as raised:
        read_instance(text, stop_before_pixels=stop_before_pixels)
    assert str(raised.value) == "not a DICOM Part 10 file: no 'DICM' prefix at byte 128 (PS3.10 7.1)"
    with pytest.raises(Unprocessable) as raised:
        read_instance(empty, stop_before_pixels=stop_before_pixels)
    assert str(raised.value) == ("not a DICOM Part 10 file: only 0 bytes, too short for the 128-byte preamble "
                                 "and 'DICM' prefix (PS3.10 7.1)")
    assert "force" not in str(raised.value).lower()


def test_check_complete_refuses_a_file_without_prefix_in_its_own_terms(tmp_path):
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + b"\0" * 200)
    with pytest.raises(Unprocessable, match=r"^not a DICOM Part 10 file: no 'DICM' prefix"):
        check_complete(bare)


# --- values pydicom cannot decode ----------------------------------------------------------


def test_a_value_pydicom_cannot_decode_is_unprocessable_naming_the_element(tmp_path):
    from pydicom.tag import Tag

    from shared.dicom.io import UndecodableValue
    from tests.support.badvalues import unknown_vr_instance

    ds = read_instance(unknown_vr_instance(tmp_path / "unknown-vr.dcm"))  # values are decoded when used
    with pytest.raises(UndecodableValue) as raised:
        ds[Tag(0x7019, 0x1080)]
    assert str(raised.value) == ("element (7019,1080) cannot be decoded as VR OB_OW (PS3.5 6.2; "
                                 "NotImplementedError)")
    assert isinstance(raised.value, Unprocessable) and isinstance(raised.value, ValueError)
