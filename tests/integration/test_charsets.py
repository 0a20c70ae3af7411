"""Text values and character sets (PS3.5 6.1): a value the dataset's Specific Character
Set cannot hold converts the instance to ISO_IR 192 (UTF-8) or is refused, never written
as ``?``. Judged by pydicom reading the output back, its bytes, and ``dciodvfy``, over
pydicom's character-set test files."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from shared import exceptions
from shared.dicom.io import read_instance, write_instance
from shared.dicom.original_attributes import OriginalAttributesPolicy
from shared.dicom.splice import write_spliced
from shared.errors import Unprocessable
from shared.morph import apply_actions
from tests.integration.test_dciodvfy import errors
from tests.support.stageports import config, ingest, run_all

# Greek, Cyrillic, Japanese, Latin and an en dash: no single legacy character set holds all
VALUE = "Ωmega–Жук^日本–é"
SET_NAME = [{"action": "set", "tag": "PatientName", "value": VALUE}]
POLICY = OriginalAttributesPolicy("AXIOM FLOW", datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc))
CHARSET_FILES = sorted(Path(f).name for f in get_charset_files("*.dcm"))
UNICODE_SETS = ("ISO_IR 192", "GB18030")  # hold every character already


def storable(name: str, tmp_path: Path) -> Path:
    """pydicom's character-set file ``name`` as a storable instance: some have no SOP
    Class/Instance UID, which every instance routed here has."""
    ds = dcmread(get_charset_files(name)[0])
    if "SOPInstanceUID" not in ds:
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[name])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / f"in-{name}"
    ds.save_as(path, enforce_file_format=True)
    return path


def morph_file(source: Path, actions, out: Path, policy=None) -> list:
    """What the morph stage does: read, apply, write by splice or else by pydicom."""
    ds = read_instance(source)
    changes = apply_actions(ds, actions, original_attributes=policy)
    if write_spliced(source, ds, None, out) is None:
        write_instance(ds, out)
    return changes


def raw_value(path: Path, tag: int) -> bytes:
    """The bytes of a top-level element as written (pydicom not asked to decode them)."""
    return dcmread(path).get_item(tag).value.rstrip(b" ")


def texts(ds: Dataset, prefix: str = "") -> dict[str, str]:
    """Every text value at every level (items included) but (0008,0005) and the
    Original Attributes Sequence."""
    found = {}
    for elem in ds:
        label = prefix + (elem.keyword or str(elem.tag))
        if elem.VR == "SQ" and elem.tag != 0x04000561:
            for i, item in enumerate(elem.value):
                found.update(texts(item, f"{label}[{i}]."))
        elif elem.VR in ("SH", "LO", "ST", "LT", "PN", "UC", "UT") and elem.tag != 0x00080005:
            found[label] = str(elem.value)
    return found


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_a_value_the_character_set_cannot_hold_converts_the_instance_to_utf8(name, tmp_path):
    """Item 5: every character of the new value arrives, every other text element
    keeps its characters, (0008,0005) says ISO_IR 192 and dciodvfy finds no new error."""
    source = storable(name, tmp_path)
    before = dcmread(source)
    out = tmp_path / "out.dcm"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        changes = morph_file(source, SET_NAME, out, POLICY)
    assert not [w for w in caught if "encode" in str(w.message)]  # pydicom's "?" fallback
    after = dcmread(out)
    assert str(after.PatientName) == VALUE
    assert {k: v for k, v in texts(after).items() if k != "PatientName"} == \
           {k: v for k, v in texts(before).items() if k != "PatientName"}
    converted = before.SpecificCharacterSet not in UNICODE_SETS
    if converted:
        assert after.SpecificCharacterSet == "ISO_IR 192"
        assert raw_value(out, 0x00100010) == VALUE.encode("utf-8")
        assert any(c.path == "SpecificCharacterSet" and c.new == "ISO_IR 192" for c in changes)
        # the record of the pass holds the original (0008,0005), which also declares how
        # the item's original values are encoded (PS3.5 7.5.3)
        [modified] = after.OriginalAttributesSequence[0].ModifiedAttributesSequence
        assert modified.SpecificCharacterSet == before.SpecificCharacterSet
        if "PatientName" in before:
            assert str(modified.PatientName) == str(before.PatientName)
        else:
            assert modified["PatientName"].is_empty  # absent before
    else:
        assert after.SpecificCharacterSet == before.SpecificCharacterSet
    assert not errors(out) - errors(source)


def test_a_private_element_of_vr_un_keeps_its_bytes_and_private_text_is_converted(tmp_path):
    """The conversion re-encodes text VRs only: an unknown (UN) private value keeps its
    bytes; a private LO is text and is converted like any other."""
    ds = dcmread(storable("chrFren.dcm", tmp_path))
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "Crème brûlée")
    opaque = b"caf\xe9\x00\x01\xff\xfe"
    ds.add(DataElement(block.get_tag(0x02), "UN", opaque))
    source = tmp_path / "private.dcm"
    ds.save_as(source)
    out = tmp_path / "out.dcm"
    morph_file(source, SET_NAME, out)
    after = dcmread(out)
    assert after.SpecificCharacterSet == "ISO_IR 192"
    assert after.private_block(0x0029, "ACME 1.0")[0x02].value == opaque
    assert raw_value(out, block.get_tag(0x01)) == "Crème brûlée".encode("utf-8")
    assert after.private_block(0x0029, "ACME 1.0")[0x01].value == "Crème brûlée"


def test_an_instance_without_specific_character_set_gets_iso_ir_192(tmp_path):
    """Item 6: no (0008,0005) and a non-ASCII value: (0008,0005) ISO_IR 192 is added and
    the name is UTF-8; without it dciodvfy reports "Character invalid for character
    repertoire" (the check is shown to see that)."""
    source = Path(get_testdata_file("MR_small.dcm"))
    assert "SpecificCharacterSet" not in dcmread(source)
    out = tmp_path / "out.dcm"
    changes = morph_file(source, [{"action": "set", "tag": "PatientName", "value": "Müller^Jürgen"}], out)
    after = dcmread(out)
    assert after.SpecificCharacterSet == "ISO_IR 192"
    assert raw_value(out, 0x00100010) == "Müller^Jürgen".encode("utf-8")
    assert str(after.PatientName) == "Müller^Jürgen"
    assert [(c.path, c.old, c.new) for c in changes][-1] == ("SpecificCharacterSet", None, "ISO_IR 192")
    assert not errors(out) - errors(source)

    undeclared = dcmread(source)  # what was written before: Latin-1 bytes, undeclared
    undeclared.PatientName = "Müller^Jürgen"
    undeclared.save_as(tmp_path / "undeclared.dcm")
    assert any("Character invalid" in line for line in errors(tmp_path / "undeclared.dcm") - errors(source))


def test_an_ascii_value_leaves_an_instance_without_specific_character_set_as_it_is(tmp_path):
    source = Path(get_testdata_file("MR_small.dcm"))
    ds = read_instance(source)
    apply_actions(ds, [{"action": "set", "tag": "PatientName", "value": "Muller^Jurgen"}])
    assert "SpecificCharacterSet" not in ds
    assert write_spliced(source, ds, None, tmp_path / "out.dcm") is not None  # still the fast path
    assert "SpecificCharacterSet" not in dcmread(tmp_path / "out.dcm")


def greek_with_invalid_bytes(tmp_path: Path) -> Path:
    """chrGreek (ISO_IR 126) with an Institution Name holding 0xFF, which ISO 8859-7
    does not define: its characters are unknown."""
    ds = dcmread(storable("chrGreek.dcm", tmp_path))
    ds.add(DataElement(0x00080080, "LO", b"Secret \xff"))
    path = tmp_path / "greek-invalid.dcm"
    ds.save_as(path)
    return path


def test_conversion_that_would_change_existing_text_is_refused_naming_the_element(tmp_path):
    source = greek_with_invalid_bytes(tmp_path)
    ds = read_instance(source)
    with pytest.raises(Unprocessable) as refused:
        apply_actions(ds, SET_NAME)
    message = str(refused.value)
    assert "InstitutionName" in message and "ISO_IR 192" in message and "PatientName" in message
    assert "Secret" not in message and "mega" not in message  # no value, old or new
    assert ds.SpecificCharacterSet == "ISO_IR 126"


def test_the_morph_stage_delivers_the_converted_instance_and_quarantines_a_refusal(make_ports, tmp_path):
    ports = make_ports(config({"id": "all", "actions": SET_NAME, "destinations": ["archive"]}))
    _, results = run_all(ports, ingest(ports, storable("chrRuss.dcm", tmp_path)))
    assert results == ["delivered"]
    [out] = (tmp_path / "out").rglob("*.dcm")
    delivered = dcmread(out)
    assert delivered.SpecificCharacterSet == "ISO_IR 192" and str(delivered.PatientName) == VALUE

    event = ingest(ports, greek_with_invalid_bytes(tmp_path))
    _, results = run_all(ports, event)
    assert results == []
    assert ports.blobs.list("quarantine") == [event.blob.name]
    [record] = [r for r in ports.docs.list(exceptions.EXCEPTIONS).values() if r["status"] == "quarantined"]
    assert "InstitutionName" in record["reason"] and "Secret" not in record["reason"]
