"""Original Attributes Sequence (PS3.3 C.12.1.1.9) written by morph passes."""

from __future__ import annotations

import copy
import io
from datetime import datetime, timedelta, timezone

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from shared.dicom.io import write_instance
from shared.dicom.original_attributes import ORIGINAL_ATTRIBUTES_SEQUENCE, OriginalAttributesPolicy, format_dt
from shared.morph import apply_actions

WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
POLICY = OriginalAttributesPolicy(modifying_system="AXIOM FLOW", modified_at=WHEN)
_CACHE: dict[str, Dataset] = {}


def load(name: str) -> Dataset:
    if name not in _CACHE:
        _CACHE[name] = pydicom.dcmread(get_testdata_file(name))
    return copy.deepcopy(_CACHE[name])


def only_item(ds: Dataset) -> Dataset:
    [item] = ds[ORIGINAL_ATTRIBUTES_SEQUENCE].value
    return item


def test_item_structure_follows_table_c12_1():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "NEW"},
                       {"action": "set", "tag": "InstitutionName", "value": "ELSEWHERE"}], original_attributes=POLICY)
    item = only_item(ds)
    assert item["ModifiedAttributesSequence"].tag == 0x04000550 and item["ModifiedAttributesSequence"].VR == "SQ"
    [modified] = item.ModifiedAttributesSequence  # "Only a single Item shall be included"
    assert modified.PatientID == "1CT1" and modified.InstitutionName == "JFK IMAGING CENTER"
    assert [e.tag for e in modified] == [0x00080080, 0x00100020]  # only what changed
    assert item["AttributeModificationDateTime"].VR == "DT"
    assert item.AttributeModificationDateTime == "20240506070809.123456+0000"
    assert item["ModifyingSystem"].VR == "LO" and item.ModifyingSystem == "AXIOM FLOW"
    assert "SourceOfPreviousValues" in item and item["SourceOfPreviousValues"].is_empty  # type 2
    assert item["ReasonForTheAttributeModification"].VR == "CS"
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert ds.PatientID == "NEW"


def test_reason_and_source_are_configurable():
    ds = load("MR_small.dcm")
    policy = OriginalAttributesPolicy("SYS", WHEN, reason="CORRECT", source_of_previous_values="SITE A")
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "X"}], original_attributes=policy)
    item = only_item(ds)
    assert item.ReasonForTheAttributeModification == "CORRECT" and item.SourceOfPreviousValues == "SITE A"
    with pytest.raises(ValueError):
        OriginalAttributesPolicy("SYS", WHEN, reason="ANONYMIZE")


def test_deleted_and_inserted_elements():
    ds = load("MR_small.dcm")
    apply_actions(ds, [{"action": "delete", "tag": "InstitutionName"},
                       {"action": "set", "tag": "PatientComments", "value": "new"}], original_attributes=POLICY)
    [modified] = only_item(ds).ModifiedAttributesSequence
    assert modified.InstitutionName == "TOSHIBA"  # removed: its value kept
    assert modified["PatientComments"].VR == "LT" and modified["PatientComments"].is_empty  # inserted: zero length


def test_change_inside_a_sequence_records_the_whole_original_sequence():
    ds = load("rtplan.dcm")
    original = copy.deepcopy(ds.DoseReferenceSequence)
    apply_actions(ds, [{"action": "set", "tag": "DoseReferenceSequence[*].DoseReferenceDescription", "value": "X"},
                       {"action": "delete", "tag": "DoseReferenceSequence[0].DoseReferenceNumber"}],
                  original_attributes=POLICY)
    [modified] = only_item(ds).ModifiedAttributesSequence
    assert [e.tag for e in modified] == [0x300A0010]
    assert modified.DoseReferenceSequence == original
    assert [i.DoseReferenceDescription for i in ds.DoseReferenceSequence] == ["X", "X"]


def test_new_private_block_recorded_as_absent_with_its_creator():
    """The new element is recorded as absent (zero length); its block's creator carries
    its value, as a private element is identified only by its owner (PS3.5 7.8.1)."""
    ds = load("MR_small.dcm")
    apply_actions(ds, [{"action": "set", "tag": '(0033,"AXIOM",01)', "value": "x", "vr": "LO"}],
                  original_attributes=POLICY)
    [modified] = only_item(ds).ModifiedAttributesSequence
    assert [e.tag for e in modified] == [0x00330010, 0x00331001]
    assert modified[0x00330010].value == "AXIOM" and modified[0x00331001].is_empty


@pytest.mark.parametrize("action", [
    {"action": "delete", "tag": '(0009,"GEMS_IDEN_01",01)'},
    {"action": "set", "tag": '(0009,"GEMS_IDEN_01",01)', "value": "X"},
    {"action": "regex_replace", "tag": '(0009,"GEMS_IDEN_01",01)', "pattern": "GE", "replacement": "G"},
])
def test_a_changed_private_element_is_recorded_with_its_private_creator(action):
    """PS3.5 7.8.1: the Modified Attributes item holds (0009,0010) 'GEMS_IDEN_01' beside
    the original (0009,1001), so a reader can tell whose element it is."""
    ds = load("CT_small.dcm")
    apply_actions(ds, [action], original_attributes=POLICY)
    [modified] = only_item(ds).ModifiedAttributesSequence
    assert [e.tag for e in modified] == [0x00090010, 0x00091001]
    assert modified[0x00090010].value == "GEMS_IDEN_01" and modified[0x00090010].VR == "LO"
    assert modified[0x00091001].value == "GE_GENESIS_FF"
    assert modified.private_block(0x0009, "GEMS_IDEN_01")[0x01].value == "GE_GENESIS_FF"


def test_no_change_no_item_and_off_by_default():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "1CT1"}], original_attributes=POLICY)
    assert ORIGINAL_ATTRIBUTES_SEQUENCE not in ds
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "other"}])
    assert ORIGINAL_ATTRIBUTES_SEQUENCE not in ds


def test_existing_items_are_kept_and_the_sequence_itself_never_recorded():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "A"}], original_attributes=POLICY)
    first = copy.deepcopy(ds[ORIGINAL_ATTRIBUTES_SEQUENCE].value[0])
    later = OriginalAttributesPolicy("AXIOM FLOW", WHEN + timedelta(hours=1))
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "B"},
                       {"action": "delete", "group": "private"}], original_attributes=later)
    items = ds[ORIGINAL_ATTRIBUTES_SEQUENCE].value
    assert len(items) == 2 and items[0] == first
    [modified] = items[1].ModifiedAttributesSequence
    assert modified.PatientID == "A" and ORIGINAL_ATTRIBUTES_SEQUENCE not in modified
    assert any(e.tag.is_private for e in modified)


def test_format_dt():
    assert format_dt(datetime(2024, 1, 2, 3, 4, 5)) == "20240102030405.000000"
    assert format_dt(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))) \
        == "20240102030405.000000-0530"


def _bytes(ds: Dataset, tmp_path, name: str) -> bytes:
    path = tmp_path / name
    write_instance(ds, path)
    return path.read_bytes()


PASS_TAGS = ["PatientID", "InstitutionName", "StudyDescription", "OtherPatientIDsSequence[0].PatientID",
             "(0019,\"GEMS_ACQU_01\",18)"]
passes = st.lists(st.one_of(
    st.builds(lambda t: {"action": "suffix", "tag": t, "value": "+"}, st.sampled_from(PASS_TAGS)),
    st.builds(lambda t: {"action": "delete", "tag": t}, st.sampled_from(PASS_TAGS)),
    st.builds(lambda t: {"action": "set", "tag": t, "value": "S", "vr": "LO"}, st.sampled_from(PASS_TAGS)),
), min_size=0, max_size=4)


@settings(max_examples=40, deadline=None)
@given(actions=passes)
def test_rerunning_a_pass_adds_exactly_one_item_and_is_deterministic(actions):
    # a leading suffix makes every pass change something, also when re-run
    actions = [{"action": "suffix", "tag": "StudyID", "value": "x"}] + actions
    ds = load("CT_small.dcm")
    counts = []
    for _ in range(3):
        apply_actions(ds, actions, original_attributes=POLICY)
        counts.append(len(ds[ORIGINAL_ATTRIBUTES_SEQUENCE].value))
    assert counts == [1, 2, 3]
    # the same pass over the same input with the same time writes the same bytes
    a, b = load("CT_small.dcm"), load("CT_small.dcm")
    apply_actions(a, actions, original_attributes=POLICY)
    apply_actions(b, actions, original_attributes=POLICY)
    out_a, out_b = io.BytesIO(), io.BytesIO()
    a.save_as(out_a, enforce_file_format=True)
    b.save_as(out_b, enforce_file_format=True)
    assert out_a.getvalue() == out_b.getvalue()


def test_written_file_reads_back(tmp_path):
    ds = load("rtplan.dcm")
    apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "X"},
                       {"action": "set", "tag": "DoseReferenceSequence[0].DoseReferenceDescription", "value": "Y"}],
                  original_attributes=POLICY)
    back = pydicom.dcmread(io.BytesIO(_bytes(ds, tmp_path, "out.dcm")))
    [modified] = only_item(back).ModifiedAttributesSequence
    assert modified.PatientID == "id00001"
    assert modified.DoseReferenceSequence[0].DoseReferenceDescription == "iso"
