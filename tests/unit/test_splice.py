"""The byte-splicing writer (shared.dicom.splice): for pydicom's test files in every
transfer syntax it accepts and every morph action, the spliced file is what
write_instance writes (element by element, and byte for byte), Pixel Data is the
source's bytes, the structure is complete and the returned sha256 is the file's; what
it cannot do falls back (None). Also: the walker's top-level spans tile the dataset,
and check_complete still refuses every cut inside an element."""

from __future__ import annotations

import hashlib
import shutil
import struct
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from shared.config import CrosswalkTable
from shared.dicom.io import DEFER_BYTES, check_complete, part10_layout, read_instance, top_level_spans, write_instance
from shared.dicom.original_attributes import OriginalAttributesPolicy
from shared.dicom.splice import write_spliced
from shared.errors import Unprocessable
from shared.morph import apply_actions
from shared.morph_services import InMemoryCrosswalk, MorphServices
from tests.support.dicomgen import make_ct_study

PIXEL_DATA = 0x7FE00010

FILES = [
    "CT_small.dcm",  # explicit VR little endian, private tags, a sequence
    "MR_small.dcm",
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "JPEG2000.dcm",  # encapsulated, undefined-length sequences, private tags
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_RLE.dcm",
    "rtplan.dcm",  # implicit, nested sequences, no pixel data
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, ISO_IR 192
]

POLICY = OriginalAttributesPolicy("AXIOM TEST", datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc))


def _first_sequence(ds: Dataset) -> str | None:
    for elem in ds:
        if elem.VR == "SQ" and elem.value and elem.keyword:
            return elem.keyword
    return None


# name -> actions for a dataset (None: not applicable to this file)
ACTIONS = {
    "set_existing": lambda ds: [{"action": "set", "tag": "PatientID", "value": "SPLICED-1"}],
    "set_longer_and_shorter": lambda ds: [{"action": "set", "tag": "PatientName", "value": "A^B"},
                                          {"action": "set", "tag": "StudyDate", "value": "20240102"},
                                          {"action": "set", "tag": "InstitutionName", "value": "X" * 63}],
    "set_new": lambda ds: [{"action": "set", "tag": "AdditionalPatientHistory", "value": "new element"},
                           {"action": "set", "tag": "(0009,0010)", "value": "AXIOM", "vr": "LO"},
                           {"action": "set", "tag": "(0020,4000)", "value": "last standard"},
                           {"action": "set", "tag": "(0040,A160)", "value": "text value"}],
    "set_private_block": lambda ds: [{"action": "set", "tag": '(0033,"AXIOM SPLICE",01)', "value": "p", "vr": "LO"}],
    "delete": lambda ds: [{"action": "delete", "tag": "PatientName"}, {"action": "delete", "tag": "StudyDate"}],
    "delete_group": lambda ds: [{"action": "delete", "group": "0020"}],
    "delete_private": lambda ds: ([{"action": "delete", "group": "private"}]
                                  if any(t.is_private for t in ds.keys()) else None),
    "prepend_suffix": lambda ds: [{"action": "prepend", "tag": "PatientID", "value": "P-"},
                                  {"action": "suffix", "tag": "StudyID", "value": "-S"}],
    "regex_replace": lambda ds: [{"action": "regex_replace", "tag": "PatientName", "pattern": r"^(\w)(\w*)",
                                  "replacement": r"\2\1"}],
    "copy": lambda ds: [{"action": "copy", "from": "PatientID", "to": "OtherPatientIDs"},
                        {"action": "copy", "from": "StudyDate", "to": "AcquisitionDate"}],
    "move": lambda ds: [{"action": "move", "from": "StudyID", "to": "ImageComments"}],
    "crosswalk": lambda ds: [{"action": "crosswalk", "tag": "PatientID", "table": "ids", "to": "IssuerOfPatientID"}],
    "set_new_sequence": lambda ds: [{"action": "set", "tag": "OtherPatientIDsSequence[0].PatientID", "value": "Q"},
                                    {"action": "set", "tag": "ReferencedStudySequence[0].ReferencedSOPInstanceUID",
                                     "value": "1.2.3.4"}],
    "set_in_existing_sequence": lambda ds: ([{"action": "set", "tag": f"{_first_sequence(ds)}[*].ImageComments",
                                              "value": "inside"}] if _first_sequence(ds) else None),
    "original_attributes": "policy",
}

SERVICES = MorphServices()


def _services(ds: Dataset) -> MorphServices:
    table = CrosswalkTable(id="ids", entries={str(ds.get("PatientID", "")): "XW-1"})
    return MorphServices(crosswalk=InMemoryCrosswalk([table]))


def _sample(name: str, tmp_path: Path) -> Path:
    source = get_testdata_file(name, download=False)
    assert source is not None, f"{name} is not in this pydicom's test data"
    path = tmp_path / name
    shutil.copy(source, path)
    return path


def _actions_for(name: str, ds: Dataset):
    make = ACTIONS[name]
    if make == "policy":
        return ACTIONS["set_existing"](ds) + ACTIONS["delete"](ds) + ACTIONS["set_new_sequence"](ds), POLICY
    return make(ds), None


def assert_same_elements(a: Dataset, b: Dataset, where: str = "") -> None:
    """Every element of ``a`` and ``b``: same tags, VRs and values, sequences item by item."""
    assert list(a.keys()) == list(b.keys()), where
    for elem_a in a:
        elem_b = b[elem_a.tag]
        label = f"{where}{elem_a.tag}"
        assert elem_a.VR == elem_b.VR, label
        if elem_a.VR == "SQ":
            assert len(elem_a.value) == len(elem_b.value), label
            for i, (item_a, item_b) in enumerate(zip(elem_a.value, elem_b.value)):
                assert_same_elements(item_a, item_b, f"{label}[{i}].")
        else:
            assert elem_a.value == elem_b.value, label


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def splice_and_write(src: Path, actions, policy, tmp_path: Path, services=None):
    """(spliced path, its returned sha256, write_instance path, its sha256, changes)."""
    spliced_ds = read_instance(src, check=False)  # as the morph stage reads
    reference_ds = read_instance(src, check=False)
    changes = apply_actions(spliced_ds, actions, services or SERVICES, original_attributes=policy)
    apply_actions(reference_ds, actions, services or SERVICES, original_attributes=policy)
    spliced, reference = tmp_path / "spliced.dcm", tmp_path / "reference.dcm"
    sha = write_spliced(src, spliced_ds, None, spliced)
    reference_sha = write_instance(reference_ds, reference)
    return spliced, sha, reference, reference_sha, changes


def _applicable_pairs() -> list[tuple[str, str]]:
    """(file, action) for every action that applies to the file (a file without private
    tags has nothing for delete_private, one without a sequence nothing to set inside)."""
    pairs = []
    for name in FILES:
        path = get_testdata_file(name, download=False)
        ds = pydicom.dcmread(path) if path else None
        pairs += [(name, action) for action in ACTIONS if ds is None or _actions_for(action, ds)[0] is not None]
    return pairs


@pytest.mark.parametrize("name,action", _applicable_pairs())
def test_spliced_file_is_what_write_instance_writes(name, action, tmp_path):
    src = _sample(name, tmp_path)
    source = pydicom.dcmread(src)
    actions, policy = _actions_for(action, source)
    spliced, sha, reference, reference_sha, changes = splice_and_write(src, actions, policy, tmp_path,
                                                                         _services(source))
    assert changes, "the actions should change something"
    assert sha is not None, "the fast path applies"
    assert sha == sha256(spliced)
    check_complete(spliced)

    out, ref = pydicom.dcmread(spliced), pydicom.dcmread(reference)
    assert_same_elements(out.file_meta, ref.file_meta, "meta ")
    assert_same_elements(out, ref)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == out.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    if "PixelData" in source:
        assert out.PixelData == source.PixelData
    if policy is not None:
        assert "OriginalAttributesSequence" in out
    # stronger than required, and what keeps the content address of a morphed object
    # the same whichever writer made it
    assert spliced.read_bytes() == reference.read_bytes()
    assert sha == reference_sha


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "rtplan.dcm"])
def test_untouched_dataset_splices_to_the_pydicom_rewrite(name, tmp_path):
    src = _sample(name, tmp_path)
    spliced, sha, reference, reference_sha, _ = splice_and_write(src, [], None, tmp_path)
    assert sha == reference_sha == sha256(spliced)


def test_given_changed_tags_are_reencoded_and_the_result_is_the_same(tmp_path):
    src = _sample("CT_small.dcm", tmp_path)
    ds = read_instance(src, check=False)
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "X"}])
    everything = {int(tag) for tag in ds.keys()}
    sha = write_spliced(src, ds, everything, tmp_path / "all.dcm")
    ds2 = read_instance(src, check=False)
    apply_actions(ds2, [{"action": "set", "tag": "PatientID", "value": "X"}])
    assert sha is not None and sha == write_spliced(src, ds2, None, tmp_path / "derived.dcm")


def test_a_change_the_caller_does_not_report_is_not_lost(tmp_path):
    src = _sample("CT_small.dcm", tmp_path)
    ds = read_instance(src, check=False)
    ds.PatientID = "CHANGED BEHIND THE BACK"
    del ds.StudyDate
    ds.PatientComments = "added"
    assert write_spliced(src, ds, set(), tmp_path / "out.dcm") is not None
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.PatientID == "CHANGED BEHIND THE BACK"
    assert "StudyDate" not in out
    assert out.PatientComments == "added"


def test_large_values_stay_in_the_source_bytes_and_still_splice(tmp_path):
    """read_instance defers values of DEFER_BYTES or more (a 512 x 512 CT's Pixel Data):
    the splice copies them by position; pydicom loads one when something uses it."""
    src = make_ct_study(tmp_path / "ct", 1)[0]
    source = pydicom.dcmread(src)
    assert len(source.PixelData) >= DEFER_BYTES
    actions = [{"action": "set", "tag": "StationName", "value": "ROUTER"}]
    spliced, sha, reference, reference_sha, _ = splice_and_write(src, actions, None, tmp_path)
    assert sha is not None, "the fast path applies to a deferred value"
    assert spliced.read_bytes() == reference.read_bytes() and sha == reference_sha
    assert pydicom.dcmread(spliced).PixelData == source.PixelData

    ds = read_instance(src, check=False)
    assert ds._dict[PIXEL_DATA].value is None  # deferred: not copied out of the source
    apply_actions(ds, [{"action": "set", "tag": "SpecificCharacterSet", "value": "ISO_IR 192"}])
    assert write_spliced(src, ds, None, tmp_path / "none.dcm") is None  # so morph writes with pydicom
    write_instance(ds, tmp_path / "rewritten.dcm")
    assert pydicom.dcmread(tmp_path / "rewritten.dcm").PixelData == source.PixelData


# --- fallbacks ------------------------------------------------------------------------------


def test_deflated_falls_back(tmp_path):
    src = _sample("image_dfl.dcm", tmp_path)
    ds = read_instance(src, check=False)
    apply_actions(ds, ACTIONS["set_existing"](ds))
    assert write_spliced(src, ds, None, tmp_path / "out.dcm") is None
    assert not (tmp_path / "out.dcm").exists()


def test_specific_character_set_change_falls_back(tmp_path):
    src = _sample("CT_small.dcm", tmp_path)
    ds = read_instance(src, check=False)
    apply_actions(ds, [{"action": "set", "tag": "SpecificCharacterSet", "value": "ISO_IR 192"}])
    assert write_spliced(src, ds, None, tmp_path / "out.dcm") is None
    ds = read_instance(src, check=False)
    apply_actions(ds, [{"action": "delete", "tag": "SpecificCharacterSet"}])
    assert write_spliced(src, ds, None, tmp_path / "out.dcm") is None


def test_dataset_read_without_pixels_or_from_another_file_falls_back(tmp_path):
    src = _sample("CT_small.dcm", tmp_path)
    assert write_spliced(src, pydicom.dcmread(src, stop_before_pixels=True), None, tmp_path / "a.dcm") is None
    other = _sample("MR_small.dcm", tmp_path)
    assert write_spliced(src, read_instance(other, check=False), None, tmp_path / "b.dcm") is None


def test_no_preamble_falls_back(tmp_path):
    src = _sample("MR_small.dcm", tmp_path)
    ds = pydicom.dcmread(src)
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False)
    ds = pydicom.dcmread(bare, force=True)
    assert write_spliced(bare, ds, None, tmp_path / "out.dcm") is None


def test_truncated_source_falls_back(tmp_path):
    src = _sample("CT_small.dcm", tmp_path)
    ds = read_instance(src, check=False)
    data = src.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-100])
    assert write_spliced(cut, ds, None, tmp_path / "out.dcm") is None


def test_out_of_order_source_falls_back(tmp_path):
    src = _sample("MR_small.dcm", tmp_path)
    data = src.read_bytes()
    offset, syntax = part10_layout(data)
    spans = top_level_spans(data, offset, syntax)
    (_, a0, _, _, a1), (_, b0, _, _, b1) = spans[1], spans[2]
    swapped = tmp_path / "swapped.dcm"
    swapped.write_bytes(data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:])
    ds = pydicom.dcmread(swapped)
    assert write_spliced(swapped, ds, None, tmp_path / "out.dcm") is None


def test_retired_group_lengths_are_dropped_as_pydicom_drops_them(tmp_path):
    """A source with (0008,0000): pydicom does not write retired group lengths (PS3.5
    section 7.2); the splice leaves it out too, so it is never left stale."""
    src = _sample("CT_small.dcm", tmp_path)
    data = src.read_bytes()
    offset, syntax = part10_layout(data)
    spans = top_level_spans(data, offset, syntax)
    group8 = sum(end - start for tag, start, _, _, end in spans if tag >> 16 == 8)
    element = struct.pack("<HH2sHL", 0x0008, 0x0000, b"UL", 4, group8)
    with_length = tmp_path / "with_group_length.dcm"
    with_length.write_bytes(data[:offset] + element + data[offset:])
    check_complete(with_length)
    actions = [{"action": "set", "tag": "InstitutionName", "value": "A MUCH LONGER INSTITUTION NAME"}]
    spliced, sha, reference, reference_sha, _ = splice_and_write(with_length, actions, None, tmp_path)
    assert sha is not None and sha == reference_sha
    assert 0x00080000 not in pydicom.dcmread(spliced)


# --- the walker shared with check_complete -------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_top_level_spans_tile_the_dataset_and_cuts_are_refused(name, tmp_path):
    src = _sample(name, tmp_path)
    data = src.read_bytes()
    offset, syntax = part10_layout(data)
    spans = top_level_spans(data, offset, syntax)
    assert spans[0][1] == offset and spans[-1][4] == len(data)
    assert all(a[4] == b[1] for a, b in zip(spans, spans[1:]))
    assert [s[0] for s in spans] == [int(t) for t in pydicom.dcmread(src).keys()]
    check_complete(src)
    boundaries = {s[1] for s in spans} | {len(data)}
    for cut in range(offset + 1, len(data), max(1, (len(data) - offset) // 97)):
        if cut in boundaries:
            continue
        truncated = tmp_path / "cut.dcm"
        truncated.write_bytes(data[:cut])
        with pytest.raises(Unprocessable, match="truncated or corrupt"):
            check_complete(truncated)


# --- property ---------------------------------------------------------------------------------

_CT = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
_PROTECTED = {0x00080005, 0x00080016, 0x00080018, 0x7FE00010}
_EXISTING = sorted(int(e.tag) for e in _CT if not e.tag.is_private and int(e.tag) not in _PROTECTED and e.keyword)
_TEXT = sorted(int(e.tag) for e in _CT if e.VR in ("LO", "SH", "LT", "ST", "PN", "UT")
               and not e.tag.is_private and e.keyword)
_NEW = ["PatientComments", "AdditionalPatientHistory", "ImageComments", "StudyComments", "Occupation",
        "PatientState", "RequestedProcedureDescription", "ReasonForStudy", "DerivationDescription"]
_op = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(_EXISTING)),
    # 16 characters: within the shortest of these VRs (SH); longer values are refused
    st.tuples(st.just("set"), st.sampled_from(_TEXT + _NEW), st.text("ABCXYZ019 ^-", min_size=0, max_size=16)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, min_size=1, max_size=8), record=st.booleans())
def test_property_random_set_and_delete_on_ct_small(ops, record, tmp_path):
    src = Path(get_testdata_file("CT_small.dcm"))
    actions = []
    for op in ops:
        tag = op[1] if isinstance(op[1], str) else f"({op[1] >> 16:04X},{op[1] & 0xFFFF:04X})"
        if op[0] == "delete":
            actions.append({"action": "delete", "tag": tag})
        else:
            actions.append({"action": "set", "tag": tag, "value": op[2].strip()})
    spliced, sha, reference, reference_sha, _ = splice_and_write(src, actions, POLICY if record else None,
                                                                   tmp_path)
    assert sha is not None
    assert sha == sha256(spliced) == reference_sha
    out = pydicom.dcmread(spliced)
    assert_same_elements(out, pydicom.dcmread(reference))
    assert out.PixelData == _CT.PixelData
    check_complete(spliced)
