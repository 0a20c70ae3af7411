"""Morph actions over every address form, on pydicom's own test files; bad config is
refused naming the field; hypothesis properties (move = copy + delete, pixel data is
never touched)."""

from __future__ import annotations

import copy
import json
import re
import typing
from datetime import datetime, timezone

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from shared.config import Action, ConfigError, CrosswalkTable, parse_config
from shared.dicom.original_attributes import OriginalAttributesPolicy
from shared.dicom.tags import locate, parse_path
from shared.errors import CrosswalkMissing, Held, Unprocessable
from shared.morph import ACTIONS as ACTION_CODE
from shared.morph import Change, _text, apply_actions, validate_actions
from shared.morph_services import FakeStandardizer, InMemoryCrosswalk, MorphServices, Unresolved

_FILES: dict[str, Dataset] = {}


def load(name: str) -> Dataset:
    """A fresh copy of a pydicom test file (parsed once per session)."""
    if name not in _FILES:
        _FILES[name] = pydicom.dcmread(get_testdata_file(name))
    return copy.deepcopy(_FILES[name])


def texts(ds: Dataset, address: str) -> list[str]:
    return [_text(parent[tag]) for parent, tag in locate(ds, parse_path(address))]


def test_every_configured_action_has_code():
    """Adding an action model to shared.config.Action without its code fails here."""
    union = typing.get_args(Action)[0]
    literals = {typing.get_args(model.model_fields["action"].annotation)[0] for model in typing.get_args(union)}
    assert literals == set(ACTION_CODE)


# --- every action over every address form -------------------------------------------------

FORMS = {
    "keyword": ("CT_small.dcm", "PatientID"),
    "paren": ("CT_small.dcm", "(0010,0020)"),
    "hex8": ("CT_small.dcm", "00100020"),
    "seq_index": ("rtplan.dcm", "DoseReferenceSequence[1].DoseReferenceDescription"),
    "seq_all": ("rtplan.dcm", "DoseReferenceSequence[*].DoseReferenceDescription"),
    "private_creator": ("CT_small.dcm", '(0019,"GEMS_ACQU_01",18)'),
}
TARGET = "PatientComments"  # LT, absent in these files


def _regex(v: str) -> str:
    return re.sub(r"^(.)(.*)$", r"\2<\1>", v)


def _crosswalk_table(orig: list[str]) -> list[CrosswalkTable]:
    return [CrosswalkTable(id="t", entries={v: f"CW{i}" for i, v in enumerate(orig)})]


def _std(v: str) -> str:
    return FakeStandardizer().standardize("free_text", v)


# name -> (action for the address, expected values at the address, expected at TARGET)
ACTIONS = {
    "set": (lambda a: {"action": "set", "tag": a, "value": "NEW"}, lambda o: ["NEW"] * len(o), lambda o: []),
    "delete": (lambda a: {"action": "delete", "tag": a}, lambda o: [], lambda o: []),
    "prepend": (lambda a: {"action": "prepend", "tag": a, "value": "P-"}, lambda o: ["P-" + v for v in o],
                lambda o: []),
    "suffix": (lambda a: {"action": "suffix", "tag": a, "value": "-S"}, lambda o: [v + "-S" for v in o],
               lambda o: []),
    "regex_replace": (lambda a: {"action": "regex_replace", "tag": a, "pattern": r"^(.)(.*)$",
                                 "replacement": r"\2<\1>"}, lambda o: [_regex(v) for v in o], lambda o: []),
    "copy": (lambda a: {"action": "copy", "from": a, "to": TARGET}, lambda o: o, lambda o: o[:1]),
    "move": (lambda a: {"action": "move", "from": a, "to": TARGET}, lambda o: o[1:], lambda o: o[:1]),
    "crosswalk": (lambda a: {"action": "crosswalk", "tag": a, "table": "t"},
                  lambda o: [f"CW{i}" for i in range(len(o))], lambda o: []),
    "crosswalk_to": (lambda a: {"action": "crosswalk", "tag": a, "table": "t", "to": TARGET}, lambda o: o,
                     lambda o: ["CW0"]),
    "ai_standardize": (lambda a: {"action": "ai_standardize", "tag": a}, lambda o: [_std(v) for v in o],
                       lambda o: []),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name", list(ACTIONS))
def test_action_over_address_form(name, form):
    filename, address = FORMS[form]
    make_action, expect_at, expect_target = ACTIONS[name]
    ds = load(filename)
    orig = texts(ds, address)
    assert orig, f"{filename} has no {address}"
    pixels = ds.get("PixelData")
    services = MorphServices(crosswalk=InMemoryCrosswalk(_crosswalk_table(orig)))

    changes = apply_actions(ds, [make_action(address)], services)

    assert texts(ds, address) == expect_at(orig)
    assert texts(ds, TARGET) == expect_target(orig)
    assert ds.get("PixelData") == pixels
    if expect_at(orig) != orig or expect_target(orig):
        assert changes and all(c.action == name.removesuffix("_to") for c in changes)
    json.dumps([c.to_dict() for c in changes])  # the dry-run diff is JSON


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name", ["set", "copy", "crosswalk", "ai_standardize"])
def test_address_form_as_write_target(name, form):
    """The same forms as targets: ``to`` of copy/crosswalk/ai_standardize, and set."""
    filename, address = FORMS[form]
    ds = load(filename)
    n = len(texts(ds, address))
    action = {
        "set": {"action": "set", "tag": address, "value": "T"},
        "copy": {"action": "copy", "from": "StudyDate", "to": address},
        "crosswalk": {"action": "crosswalk", "tag": "StudyDate", "table": "t", "to": address},
        "ai_standardize": {"action": "ai_standardize", "tag": "StudyDate", "to": address},
    }[name]
    date = texts(ds, "StudyDate")[0]
    services = MorphServices(crosswalk=InMemoryCrosswalk([CrosswalkTable(id="t", entries={date: "T"})]))
    apply_actions(ds, [action], services)
    expected = {"set": "T", "copy": date, "crosswalk": "T", "ai_standardize": date}[name]
    assert texts(ds, address) == [expected] * n


# --- creating, VRs, templates -----------------------------------------------------------


def test_set_creates_sequence_item_and_uses_dictionary_vr():
    ds = load("MR_small.dcm")
    assert "ReferencedStudySequence" not in ds
    changes = apply_actions(ds, [{"action": "set", "tag": "ReferencedStudySequence[0].ReferencedSOPInstanceUID",
                                  "value": "1.2.3.4"}])
    item = ds.ReferencedStudySequence[0]
    assert item["ReferencedSOPInstanceUID"].VR == "UI" and item.ReferencedSOPInstanceUID == "1.2.3.4"
    assert changes == [Change(0, "set", "ReferencedStudySequence[0].ReferencedSOPInstanceUID", None, "1.2.3.4")]


def test_set_new_private_tag_needs_vr_and_creates_the_block():
    ds = load("MR_small.dcm")
    with pytest.raises(Unprocessable, match=r"action 0 \(set \(0033,\"AXIOM\",01\)\): no VR is known .* 'vr'"):
        apply_actions(ds, [{"action": "set", "tag": '(0033,"AXIOM",01)', "value": "x"}])
    ds = load("MR_small.dcm")
    changes = apply_actions(ds, [{"action": "set", "tag": '(0033,"AXIOM",01)', "value": "x", "vr": "LO"}])
    assert ds[0x00330010].value == "AXIOM" and ds[0x00331001].VR == "LO" and ds[0x00331001].value == "x"
    assert [c.path for c in changes] == ["(0033,0010)", '(0033,"AXIOM",01)']


def test_set_with_all_items_and_no_sequence_leaves_nothing_behind():
    ds = load("MR_small.dcm")
    before = copy.deepcopy(ds)
    assert apply_actions(ds, [{"action": "set", "tag": "ReferencedStudySequence[*].ReferencedSOPInstanceUID",
                               "value": "1.2"}]) == []
    assert ds == before


def test_set_keeps_existing_vr_and_numbers_become_numbers():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "set", "tag": "Rows", "value": "256"},
                       {"action": "set", "tag": "PixelSpacing", "value": "0.5\\0.5"}])
    assert ds.Rows == 256 and ds["Rows"].VR == "US"
    assert list(ds.PixelSpacing) == [0.5, 0.5]


def test_template_uses_values_as_received():
    ds = load("CT_small.dcm")
    apply_actions(ds, [
        {"action": "set", "tag": "PatientID", "value": "changed"},
        {"action": "set", "tag": "StudyDescription", "value": "{PatientID}-{InstitutionName|lower}"},
        {"action": "set", "tag": "StudyID", "value": "{{{Modality|upper}}}"},
        {"action": "set", "tag": "ImageComments", "value": "[{PatientComments}]"},
    ])
    assert ds.PatientID == "changed"
    assert ds.StudyDescription == "1CT1-jfk imaging center"  # PatientID as received
    assert ds.StudyID == "{CT}"
    assert ds.ImageComments == "[]"  # absent: empty


def test_template_multi_value_joined_with_backslash():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "set", "tag": "ImageComments", "value": "{ImageType}"}])
    assert ds.ImageComments == "ORIGINAL\\PRIMARY\\AXIAL"


def test_prepend_suffix_regex_apply_per_value():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "prepend", "tag": "ImageType", "value": "X"},
                       {"action": "suffix", "tag": "ImageType", "value": "Y"},
                       {"action": "regex_replace", "tag": "ImageType", "pattern": "^XO", "replacement": "O"}])
    assert list(ds.ImageType) == ["ORIGINALY", "XPRIMARYY", "XAXIALY"]


def test_regex_named_group_and_count():
    ds = load("rtplan.dcm")
    apply_actions(ds, [{"action": "regex_replace", "tag": "PatientName", "pattern": r"(?P<w>[a-z]+)",
                        "replacement": r"<\g<w>>", "count": 1}])
    assert str(ds.PatientName) == "L<ast>^First^mid^pre"


def test_delete_group_private_at_every_level():
    ds = load("nested_priv_SQ.dcm")
    assert any(e.tag.is_private for e in ds.iterall())
    changes = apply_actions(ds, [{"action": "delete", "group": "private"}])
    assert changes and not any(e.tag.is_private for e in ds.iterall())
    ct = load("CT_small.dcm")
    expected = copy.deepcopy(ct)
    expected.remove_private_tags()
    apply_actions(ct, [{"action": "delete", "group": "private"}])
    assert ct == expected


def test_delete_hex_group_top_level():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "delete", "group": "0018"}])
    assert not [e for e in ds if e.tag.group == 0x0018]
    assert "PatientID" in ds


def test_move_and_copy_convert_vr():
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "copy", "from": "Rows", "to": "StudyID"},
                       {"action": "move", "from": "StudyID", "to": "ImageComments"}])
    assert "StudyID" not in ds and ds.ImageComments == "128"
    with pytest.raises(Unprocessable, match=r"action 0 \(copy PatientName -> Rows\): the resulting value"):
        apply_actions(load("CT_small.dcm"), [{"action": "copy", "from": "PatientName", "to": "Rows"}])


def test_copy_sequence_is_deep():
    ds = load("rtplan.dcm")
    apply_actions(ds, [{"action": "copy", "from": "DoseReferenceSequence", "to": "ReferencedStudySequence"}])
    ds.DoseReferenceSequence[0].DoseReferenceDescription = "changed"
    assert ds.ReferencedStudySequence[0].DoseReferenceDescription == "iso"


def test_missing_source_is_no_change():
    ds = load("MR_small.dcm")
    assert apply_actions(ds, [{"action": "copy", "from": "StudyComments", "to": "ImageComments"},
                              {"action": "delete", "tag": "StudyComments"},
                              {"action": "prepend", "tag": "StudyComments", "value": "x"}]) == []


# --- crosswalk and standardizer ---------------------------------------------------------


def test_crosswalk_missing_entry_modes_and_no_phi_in_message():
    tables = [CrosswalkTable(id="ids", entries={"1ct1": "MAPPED"}, case_insensitive=True),
              CrosswalkTable(id="exact", entries={"1ct1": "MAPPED"})]
    services = MorphServices(crosswalk=InMemoryCrosswalk(tables))
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "ids"}], services)
    assert ds.PatientID == "MAPPED"

    ds = load("CT_small.dcm")
    assert apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "exact"}], services) == []
    apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "exact", "on_missing": "default",
                        "default": "UNKNOWN"}], services)
    assert ds.PatientID == "UNKNOWN"

    for spelling in ("error", "fail"):
        ds = load("CT_small.dcm")
        with pytest.raises(CrosswalkMissing) as err:
            apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "exact", "on_missing": spelling}],
                          services)
        assert str(err.value) == ("action 0 (crosswalk PatientID): crosswalk table 'exact' has no entry for the "
                                  "value of PatientID")
        assert "1CT1" not in str(err.value)
    with pytest.raises(Held, match="action 0 .* no entry yet"):
        apply_actions(load("CT_small.dcm"), [{"action": "crosswalk", "tag": "PatientID", "table": "exact",
                                              "on_missing": "hold"}], services)


def test_a_miss_follows_the_tables_on_miss_unless_the_action_says_otherwise():
    tables = [CrosswalkTable(id="strict", entries={}, on_miss="fail"),
              CrosswalkTable(id="fallback", entries={}, on_miss="default", default="UNMAPPED")]
    services = MorphServices(crosswalk=InMemoryCrosswalk(tables), tables={t.id: t for t in tables})
    with pytest.raises(CrosswalkMissing):
        apply_actions(load("CT_small.dcm"), [{"action": "crosswalk", "tag": "PatientID", "table": "strict"}], services)
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "fallback"}], services)
    assert ds.PatientID == "UNMAPPED"
    ds = load("CT_small.dcm")
    apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "strict", "on_missing": "keep"}], services)
    assert ds.PatientID == "1CT1"


class _TwoKeys:
    """A crosswalk keyed by (issuer, patient ID), as a database map with two key columns."""

    def answer(self, table_id, key, *, fresh=False):
        return {("HOSP-A", "1CT1"): "R-A", ("HOSP-B", "1CT1"): "R-B"}.get(tuple(key)), False


def test_key_tags_make_a_key_of_several_elements_in_their_order():
    for issuer, expected in (("HOSP-A", "R-A"), ("HOSP-B", "R-B")):
        ds = load("CT_small.dcm")
        ds.IssuerOfPatientID = issuer
        apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "research",
                            "key_tags": ["IssuerOfPatientID", "PatientID"]}], MorphServices(crosswalk=_TwoKeys()))
        assert ds.PatientID == expected


def test_recorded_answers_are_what_morph_writes_without_asking_again():
    """The crosswalk stage records; morph, given the records only, writes the same."""
    tables = [CrosswalkTable(id="ids", entries={"1CT1": "MAPPED"})]
    actions = [{"action": "set", "tag": "StudyDescription", "value": "  head   ct "},
               {"action": "crosswalk", "tag": "PatientID", "table": "ids"},
               {"action": "ai_standardize", "tag": "StudyDescription", "kind": "study_description"}]
    live = MorphServices(crosswalk=InMemoryCrosswalk(tables)).recording()
    first = load("CT_small.dcm")
    apply_actions(first, actions, live)
    assert [(lk.action, lk.key, lk.value, lk.source) for lk in live.recorded] == [
        (1, ["1CT1"], "MAPPED", "table"), (2, ["  head   ct "], "HEAD CT", "deterministic")]

    class Refuses:
        def answer(self, table_id, key, *, fresh=False):
            raise AssertionError("morph asked the crosswalk")

    second = load("CT_small.dcm")
    apply_actions(second, actions, MorphServices(crosswalk=Refuses(), resolved=live.recorded))
    assert (second.PatientID, second.StudyDescription) == (first.PatientID, first.StudyDescription) == (
        "MAPPED", "HEAD CT")
    with pytest.raises(Unresolved):
        other = load("CT_small.dcm")
        other.PatientID = "OTHER"
        apply_actions(other, actions, MorphServices.from_lookups(live.recorded))


def test_invalid_value_at_run_time_names_action_and_tag_without_the_value():
    ds = load("CT_small.dcm")
    with pytest.raises(Unprocessable) as err:
        apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "x"},
                           {"action": "prepend", "tag": "StudyDate", "value": "X"}])
    assert str(err.value).startswith("action 1 (prepend StudyDate): ")
    assert "VR DA" in str(err.value) and "19970430" not in str(err.value)
    with pytest.raises(Unprocessable, match=r"action 0 \(set PatientBirthDate\): .*VR DA"):
        apply_actions(load("CT_small.dcm"), [{"action": "set", "tag": "PatientBirthDate", "value": "{PatientID}"}])
    with pytest.raises(Unprocessable, match=r"action 0 \(suffix PatientID\): .*VR LO"):
        apply_actions(load("CT_small.dcm"), [{"action": "suffix", "tag": "PatientID", "value": "x" * 70}])


def test_fake_standardizer_is_deterministic_and_cached():
    std = FakeStandardizer()
    allowed = ["CT CHEST", "CT HEAD", "MR BRAIN"]
    assert std.standardize("series_description", "  ct   chest ", allowed=allowed) == "CT CHEST"
    assert std.standardize("series_description", "ct chst", allowed=allowed) == "CT CHEST"
    # nothing close: the value is kept, never an answer outside `allowed`
    kept = std.answer("series_description", "something else", allowed=allowed)
    assert (kept.value, kept.source) == ("something else", "fallback") and "allowed" in kept.reason
    assert std.standardize("free_text", " a  b ") == "A B"
    assert std.answer("free_text", " a  b ").source == "deterministic"
    calls = std.calls
    assert std.standardize("series_description", "ct chst", allowed=allowed) == "CT CHEST"
    assert std.calls == calls


def test_services_from_config():
    config = parse_config({"crosswalks": [{"id": "t", "entries": {"a": "b"}}]})
    services = MorphServices.from_config(config)
    assert services.crosswalk.lookup("t", "a") == "b" and services.crosswalk.lookup("t", "x") is None
    assert isinstance(services.standardizer, FakeStandardizer)


def test_ai_standardize_to_other_tag_with_allowed():
    ds = load("JPEG2000.dcm")
    apply_actions(ds, [{"action": "ai_standardize", "tag": "StudyDescription", "to": "SeriesDescription",
                        "kind": "series_description", "allowed": ["Whole Body", "Head"]}])
    assert ds.SeriesDescription == "Whole Body" and ds.StudyDescription == "Whole Body Bone"


# --- bad config is refused naming the field ---------------------------------------------------


def _config(*actions):
    return {"crosswalks": [{"id": "t"}],
            "rulesets": [{"id": "r", "rules": [{"id": "a", "actions": list(actions)}]}]}


BAD = [
    ({"action": "set", "tag": "PatientBirthDate", "value": "2024-13-45"},
     "rulesets.0.rules.0.actions.0.set: ", "not valid for VR DA"),
    ({"action": "set", "tag": "Rows", "value": "abc"}, "rulesets.0.rules.0.actions.0.set: ", "VR US"),
    ({"action": "set", "tag": "PatientID", "value": "x", "vr": "XX"},
     "rulesets.0.rules.0.actions.0.set.vr: ", "unknown VR 'XX'"),
    ({"action": "set", "tag": "PatientID", "value": "{Nope}"}, "rulesets.0.rules.0.actions.0.set: ", "Nope"),
    ({"action": "set", "tag": "PixelData", "value": "x"}, "rulesets.0.rules.0.actions.0.set.tag: ", "7FE0"),
    ({"action": "delete", "tag": "TransferSyntaxUID"}, "rulesets.0.rules.0.actions.0.delete.tag: ", "0002"),
    ({"action": "delete", "group": "0002"}, "rulesets.0.rules.0.actions.0.delete: ", "cannot be deleted"),
    ({"action": "delete", "group": "private", "tag": "PatientID"}, "rulesets.0.rules.0.actions.0.delete: ",
     "exactly one"),
    ({"action": "regex_replace", "tag": "PatientID", "pattern": "(a", "replacement": ""},
     "rulesets.0.rules.0.actions.0.regex_replace.pattern: ", "invalid regular expression"),
    ({"action": "regex_replace", "tag": "PatientID", "pattern": "(a)\\1", "replacement": ""},
     "rulesets.0.rules.0.actions.0.regex_replace.pattern: ", "invalid regular expression"),
    ({"action": "regex_replace", "tag": "PatientID", "pattern": "(a)", "replacement": "\\2"},
     "rulesets.0.rules.0.actions.0.regex_replace: ", "group 2"),
    ({"action": "copy", "from": "PatientID", "to": "PixelData"},
     "rulesets.0.rules.0.actions.0.copy.to: ", "7FE0"),
    ({"action": "move", "from": "NoSuchKeyword", "to": "PatientID"},
     "rulesets.0.rules.0.actions.0.move.from: ", "NoSuchKeyword"),
    ({"action": "crosswalk", "tag": "PatientID", "table": "t", "on_missing": "default"},
     "rulesets.0.rules.0.actions.0.crosswalk: ", "needs a default"),
    ({"action": "crosswalk", "tag": "PatientBirthDate", "table": "t", "on_missing": "default", "default": "x"},
     "rulesets.0.rules.0.actions.0.crosswalk: ", "VR DA"),
    ({"action": "crosswalk", "tag": "PatientID", "table": "nope"}, "rulesets[r].rules[a].actions[0].table",
     "unknown crosswalk table"),
    ({"action": "frobnicate", "tag": "PatientID"}, "rulesets.0.rules.0.actions.0", "frobnicate"),
]


@pytest.mark.parametrize("action,field,reason", BAD, ids=[f"{b[0]['action']}-{i}" for i, b in enumerate(BAD)])
def test_bad_config_is_refused_naming_the_field(action, field, reason):
    with pytest.raises(ConfigError) as err:
        parse_config(_config(action))
    assert field in str(err.value) and reason in str(err.value)


def test_plan_actions_are_validated_too():
    with pytest.raises(ConfigError, match=r"actions\.0\.set\.tag: .*7FE0"):
        validate_actions([{"action": "set", "tag": "(7FE0,0010)", "value": "x"}])


# --- properties -----------------------------------------------------------------------------

TEXT_TAGS = ["PatientID", "InstitutionName", "StudyID", "AccessionNumber", "ImageComments", "StudyDescription",
             "(0019,\"GEMS_ACQU_01\",18)", "OtherPatientIDsSequence[0].PatientID", "ReferringPhysicianName"]
values = st.text(alphabet="ABCDEFGHIJ0123456789 -", min_size=1, max_size=10).map(str.strip).filter(bool)


def _action_strategy():
    tag = st.sampled_from(TEXT_TAGS)
    return st.one_of(
        st.builds(lambda t, v: {"action": "set", "tag": t, "value": v, "vr": "LO"}, tag, values),
        st.builds(lambda t: {"action": "delete", "tag": t}, tag),
        st.just({"action": "delete", "group": "private"}),
        st.builds(lambda t, v: {"action": "prepend", "tag": t, "value": v}, tag, values),
        st.builds(lambda t, v: {"action": "suffix", "tag": t, "value": v}, tag, values),
        st.builds(lambda t: {"action": "regex_replace", "tag": t, "pattern": "[0-9]", "replacement": "N"}, tag),
        st.builds(lambda a, b: {"action": "copy", "from": a, "to": b}, tag, tag),
        st.builds(lambda a, b: {"action": "move", "from": a, "to": b}, tag, tag),
        st.builds(lambda t: {"action": "crosswalk", "tag": t, "table": "t", "on_missing": "default",
                             "default": "D"}, tag),
        st.builds(lambda t: {"action": "ai_standardize", "tag": t}, tag),
    )


SERVICES = MorphServices(crosswalk=InMemoryCrosswalk([CrosswalkTable(id="t", entries={"1CT1": "X"})]))


@pytest.fixture()
def no_decoding(monkeypatch):
    def refuse(self):
        raise AssertionError("pixel data was decoded")
    monkeypatch.setattr(Dataset, "pixel_array", property(refuse))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(_action_strategy(), min_size=1, max_size=6))
def test_no_action_changes_pixel_data_bytes(no_decoding, actions):
    ds = load("CT_small.dcm")
    pixels = bytes(ds.PixelData)
    try:
        apply_actions(ds, actions, SERVICES, original_attributes=OriginalAttributesPolicy(
            "AXIOM", datetime(2024, 1, 1, tzinfo=timezone.utc)))
    except Unprocessable:
        pass  # e.g. a value too long for its VR: refused, and pixel data untouched still
    assert bytes(ds.PixelData) == pixels
    assert ds["PixelData"].VR == _FILES["CT_small.dcm"]["PixelData"].VR


MOVE_TAGS = ["PatientID", "InstitutionName", "StudyID", "AccessionNumber", "ImageComments", "OperatorsName",
             "OtherPatientIDsSequence[0].PatientID", "(0019,\"GEMS_ACQU_01\",18)", "StationName"]


@settings(max_examples=60, deadline=None)
@given(source=st.sampled_from(MOVE_TAGS), target=st.sampled_from(MOVE_TAGS),
       filename=st.sampled_from(["CT_small.dcm", "MR_small.dcm"]))
def test_move_is_copy_then_delete(source, target, filename):
    moved, copied = load(filename), load(filename)
    outcome = []
    for ds, actions in ((moved, [{"action": "move", "from": source, "to": target}]),
                        (copied, [{"action": "copy", "from": source, "to": target},
                                  {"action": "delete", "tag": source}])):
        try:
            apply_actions(ds, actions)
            outcome.append("ok")
        except Unprocessable as exc:
            outcome.append(str(exc).split(": ", 1)[1])
    assert outcome[0] == outcome[1]
    if outcome[0] == "ok" and source != target and texts(load(filename), source):
        assert moved == copied


# --- character sets (PS3.5 6.1) -------------------------------------------------------------


def load_charset(name: str) -> Dataset:
    from pydicom.data import get_charset_files
    return pydicom.dcmread(get_charset_files(name)[0])


@pytest.mark.parametrize("terms, text, expected", [
    ((), "Muller", True),
    ((), "Müller", False),  # the default repertoire is ASCII (pydicom would write Latin-1)
    (("ISO_IR 100",), "Müller", True),
    (("ISO_IR 100",), "Жук", False),
    (("ISO_IR 144",), "Жук", True),
    (("", "ISO 2022 IR 87"), "Yamada^山田", True),  # code extensions: ASCII and JIS X 0208 runs
    (("", "ISO 2022 IR 87"), "é", False),  # not Latin-1 behind an ISO 2022 IR 6 G0 either
    (("ISO 2022 IR 13", "ISO 2022 IR 87"), "ﾔﾏﾀﾞ^山田", True),
    (("ISO_IR 192",), "Ωmega–Жук^日本–é", True),
    (("GB18030",), "Ωmega–Жук^日本–é", True),
])
def test_fits_uses_pydicoms_codecs_with_an_ascii_default_repertoire(terms, text, expected):
    from shared.dicom.charsets import encodings_for, fits
    assert fits(text, encodings_for(terms)) is expected


def test_a_value_that_fits_keeps_the_character_set():
    ds = load_charset("chrRuss.dcm")
    changes = apply_actions(ds, [{"action": "set", "tag": "PatientName", "value": "Жук^Иван"}])
    assert ds.SpecificCharacterSet == "ISO_IR 144" and [c.path for c in changes] == ["PatientName"]


def test_a_value_written_into_an_item_with_its_own_character_set_converts_the_item_too():
    """chrSQEncoding: UTF-8 at the top, but the item of (0032,1064) declares ISO 2022
    IR 13/87 (PS3.5 7.5.3); a Latin value there, which JIS X 0201/0208 lack, converts
    that item to ISO_IR 192 and keeps its Japanese name."""
    ds = load_charset("chrSQEncoding.dcm")
    item_name = str(ds.RequestedProcedureCodeSequence[0].PatientName)
    changes = apply_actions(ds, [{"action": "set", "tag": "RequestedProcedureCodeSequence[0].CodeMeaning",
                                  "value": "Crème"}])
    assert [(c.path, c.old, c.new) for c in changes][1:] == [
        ("RequestedProcedureCodeSequence[0].SpecificCharacterSet", "ISO 2022 IR 13\\ISO 2022 IR 87", "ISO_IR 192")]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    [item] = ds.RequestedProcedureCodeSequence
    assert item.SpecificCharacterSet == "ISO_IR 192" and item.CodeMeaning == "Crème"
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_written(ds)))
    assert str(back.RequestedProcedureCodeSequence[0].PatientName) == item_name
    assert back.RequestedProcedureCodeSequence[0].CodeMeaning == "Crème"


def _written(ds: Dataset) -> bytes:
    import io
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_an_unknown_character_set_is_refused_not_guessed():
    ds = load_charset("chrFren.dcm")
    ds.SpecificCharacterSet = "ISO_IR 999"
    with pytest.warns(UserWarning):
        with pytest.raises(Unprocessable, match=r"action 0 \(set PatientName\).*ISO_IR 999"):
            apply_actions(ds, [{"action": "set", "tag": "PatientName", "value": "Жук"}])


def test_implicit_vr_private_bytes_survive_the_conversion():
    """An implicit VR file's unknown private element is UN to pydicom: the conversion
    leaves its bytes alone."""
    ds = load("MR_small_implicit.dcm")
    opaque = b"caf\xe9\x00\x01"
    ds.add_new(0x00291010, "UN", opaque)
    ds.add_new(0x00290010, "LO", "ACME")
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_written(ds)))
    apply_actions(back, [{"action": "set", "tag": "PatientName", "value": "Müller"}])
    again = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_written(back)))
    assert again.SpecificCharacterSet == "ISO_IR 192" and again.PatientName == "Müller"
    assert again[0x00291010].value == opaque


# --- modules brought in (PS3.3) -------------------------------------------------------------


def test_a_module_brought_in_through_a_sequence_path_gets_its_type2_recorded_as_absent():
    """A new Institutional Department Type Code Sequence brings General Equipment into a
    Secondary Capture image: Manufacturer is added empty, listed as a change of that
    action, and recorded in Original Attributes as absent before (zero length)."""
    ds = load("SC_rgb_small_odd.dcm")
    assert "Manufacturer" not in ds
    policy = OriginalAttributesPolicy("AXIOM FLOW", datetime(2024, 1, 1, tzinfo=timezone.utc))
    changes = apply_actions(ds, [{"action": "set", "tag": "PatientID", "value": "X"},
                                 {"action": "set", "tag": "InstitutionalDepartmentTypeCodeSequence[0].CodeValue",
                                  "value": "RAD"}], original_attributes=policy)
    assert Change(1, "set", "Manufacturer", None, "") in changes
    assert ds["Manufacturer"].is_empty and ds["Manufacturer"].VR == "LO"
    [modified] = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence
    assert modified["Manufacturer"].is_empty


def test_a_module_inserted_and_removed_in_the_same_pass_adds_nothing():
    ds = load("SC_rgb_small_odd.dcm")
    changes = apply_actions(ds, [{"action": "set", "tag": "StationName", "value": "X"},
                                 {"action": "delete", "tag": "StationName"}])
    assert "Manufacturer" not in ds and [c.path for c in changes] == ["StationName", "StationName"]


def test_a_missing_key_is_named_by_its_elements_and_empty_ones_are_said():
    ds = load("CT_small.dcm")
    ds.IssuerOfPatientID = ""
    with pytest.raises(CrosswalkMissing) as err:
        apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "research", "on_missing": "fail",
                            "key_tags": ["IssuerOfPatientID", "PatientID"]}], MorphServices(crosswalk=_TwoKeys()))
    assert str(err.value).endswith("has no entry for the values of IssuerOfPatientID, PatientID "
                                   "(IssuerOfPatientID empty)")
    assert "1CT1" not in str(err.value)
