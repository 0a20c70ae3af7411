"""The rule engine, table-driven: every operator, address form, association field,
schedule edge; index equivalence and FIRST_MATCH as properties."""

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.config import ConfigError, Schedule, parse_config
from shared.messages import IngestMetadata
from shared.rules import decide, validate_instance
from shared.schedules import is_active


def instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.PatientID = "PID-001"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDescription = "CT Chest With Contrast"
    ds.StudyDate = "20240315"
    ds.StudyTime = "143000"
    ds.AcquisitionDateTime = "20240315143000+0100"
    ds.SliceThickness = "2.5"
    ds.Rows = 512
    ds.InstanceNumber = "12"
    ds.PatientWeight = "80"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = "1.2.9.1"
    ref2 = Dataset()
    ref2.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref2.ReferencedSOPInstanceUID = "1.2.9.2"
    ds.ReferencedStudySequence = Sequence([ref, ref2])
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x08, "CS", "IMAGE NUM 4")
    return ds


INGEST = IngestMetadata(source_type="cstore", source_id="main", calling_ae="CT_SCANNER_1", called_ae="AXIOM",
                        peer_ip="10.1.2.3", received_at=datetime(2024, 3, 15, 14, 30, tzinfo=timezone.utc))


def matches(when, ds=None, ingest=INGEST, **extra) -> bool:
    config = parse_config({
        "destinations": [{"id": "d", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "rs", "rules": [{"id": "r", "when": when, "destinations": ["d"]}]}],
        **extra,
    })
    return bool(decide(config, ds or instance(), ingest).matched)


TAG_CASES = [
    # operator, tag, value, extra, expected
    ("eq", "Modality", "CT", {}, True),
    ("eq", "Modality", "ct", {}, False),
    ("eq", "Modality", "ct", {"case_insensitive": True}, True),
    ("ne", "Modality", "MR", {}, True),
    ("ne", "Modality", "CT", {}, False),
    ("eq", "SliceThickness", "2.50", {}, True),  # DS compared as a number
    ("eq", "InstanceNumber", 12, {}, True),
    ("gt", "SliceThickness", "2", {}, True),
    ("gt", "SliceThickness", "10", {}, False),  # numeric, not text order
    ("ge", "Rows", 512, {}, True),
    ("lt", "Rows", 1024, {}, True),
    ("le", "PatientWeight", "79.9", {}, False),
    ("gt", "StudyDate", "20240301", {}, True),
    ("lt", "StudyDate", "20240316", {}, True),
    ("le", "StudyTime", "143000", {}, True),
    ("gt", "StudyTime", "0900", {}, True),
    ("lt", "AcquisitionDateTime", "20240315133001+0000", {}, True),  # 14:30+01:00 is 13:30 UTC
    ("gt", "AcquisitionDateTime", "20240315133001+0000", {}, False),
    ("exists", "Modality", None, {}, True),
    ("exists", "PatientName", None, {}, False),
    ("not_exists", "PatientName", None, {}, True),
    ("contains", "StudyDescription", "Chest", {}, True),
    ("contains", "StudyDescription", "chest", {}, False),
    ("contains", "StudyDescription", "chest", {"case_insensitive": True}, True),
    ("not_contains", "StudyDescription", "Head", {}, True),
    ("startswith", "StudyDescription", "CT ", {}, True),
    ("endswith", "StudyDescription", "Contrast", {}, True),
    ("regex", "StudyDescription", r"^CT\s+chest", {"case_insensitive": True}, True),
    ("regex", "StudyDescription", r"^MR", {}, False),
    ("in", "Modality", ["MR", "CT"], {}, True),
    ("in", "Modality", ["MR", "US"], {}, False),
    ("not_in", "Modality", ["MR", "US"], {}, True),
    # multi-valued: any value by default, every value on request
    ("eq", "ImageType", "AXIAL", {}, True),
    ("eq", "ImageType", "AXIAL", {"match": "all"}, False),
    ("regex", "ImageType", "^[A-Z]+$", {"match": "all"}, True),
    # absent elements
    ("eq", "AccessionNumber", "X", {}, False),
    ("ne", "AccessionNumber", "X", {}, True),
    ("gt", "AccessionNumber", "1", {}, False),
]


@pytest.mark.parametrize("op, tag, value, extra, expected", TAG_CASES,
                         ids=[f"{c[1]}-{c[0]}-{c[2]}-{c[4]}" for c in TAG_CASES])
def test_tag_operators(op, tag, value, extra, expected):
    cond = {"tag": tag, "op": op, **extra}
    if value is not None:
        cond["value"] = value
    assert matches(cond) is expected


ADDRESS_CASES = [
    ("PatientID", "PID-001"),
    ("(0010,0020)", "PID-001"),
    ("00100020", "PID-001"),
    ("ReferencedStudySequence[0].ReferencedSOPInstanceUID", "1.2.9.1"),
    ("ReferencedStudySequence[1].ReferencedSOPInstanceUID", "1.2.9.2"),
    ("ReferencedStudySequence[*].ReferencedSOPInstanceUID", "1.2.9.2"),
    ("ReferencedStudySequence.ReferencedSOPInstanceUID", "1.2.9.1"),
    ('(0019,"SIEMENS MR HEADER",08)', "IMAGE NUM 4"),
]


@pytest.mark.parametrize("address, value", ADDRESS_CASES)
def test_address_forms(address, value):
    assert matches({"tag": address, "value": value})
    assert not matches({"tag": address, "value": "something else"})


def test_item_index_selects_one_item():
    assert not matches({"tag": "ReferencedStudySequence[0].ReferencedSOPInstanceUID", "value": "1.2.9.2"})
    assert not matches({"tag": "ReferencedStudySequence[5].ReferencedSOPInstanceUID", "op": "exists"})


def test_private_tag_of_another_creator_is_not_matched():
    assert not matches({"tag": '(0019,"GEMS_ACQU_01",08)', "op": "exists"})


ASSOCIATION_CASES = [
    ({"association": "calling_ae", "value": "CT_SCANNER_1"}, True),
    ({"association": "calling_ae", "value": "ct_scanner_1"}, False),
    ({"association": "calling_ae", "value": "ct_scanner_1", "case_insensitive": True}, True),
    ({"association": "calling_ae", "op": "startswith", "value": "CT_"}, True),
    ({"association": "calling_ae", "op": "regex", "value": r"_\d$"}, True),
    ({"association": "called_ae", "op": "in", "value": ["AXIOM", "OTHER"]}, True),
    ({"association": "called_ae", "op": "not_in", "value": ["AXIOM"]}, False),
    ({"association": "source_ip", "value": "10.0.0.0/8"}, True),
    ({"association": "source_ip", "op": "in", "value": ["192.168.0.0/16", "10.1.2.3"]}, True),
    ({"association": "source_ip", "op": "not_in", "value": ["10.1.0.0/16"]}, False),
    ({"association": "source_ip", "value": "2001:db8::/32"}, False),
    ({"association": "source_type", "value": "cstore"}, True),
    ({"association": "source_id", "op": "ne", "value": "main"}, False),
]


@pytest.mark.parametrize("cond, expected", ASSOCIATION_CASES)
def test_association_conditions(cond, expected):
    assert matches(cond) is expected


def test_ipv6_source():
    v6 = INGEST.model_copy(update={"peer_ip": "2001:db8::42"})
    assert matches({"association": "source_ip", "value": "2001:db8::/32"}, ingest=v6)
    assert not matches({"association": "source_ip", "value": "10.0.0.0/8"}, ingest=v6)


def test_boolean_groups_nest():
    ct_from_scanner = {"all": [{"tag": "Modality", "value": "CT"},
                               {"any": [{"association": "calling_ae", "value": "NOPE"},
                                        {"not": {"tag": "PatientName", "op": "exists"}}]}]}
    assert matches(ct_from_scanner)
    assert not matches({"not": ct_from_scanner})


# --- schedules ---------------------------------------------------------------------------

def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


SCHEDULE_CASES = [
    # schedule, moment, expected
    ({"start": "08:00", "end": "18:00", "days": ["mon", "tue", "wed", "thu", "fri"]}, "2024-03-15T12:00:00+00:00", True),  # Fri
    ({"start": "08:00", "end": "18:00", "days": ["mon", "tue", "wed", "thu", "fri"]}, "2024-03-16T12:00:00+00:00", False),  # Sat
    ({"start": "08:00", "end": "18:00"}, "2024-03-15T18:00:00+00:00", False),  # end is exclusive
    ({"start": "08:00", "end": "18:00"}, "2024-03-15T08:00:00+00:00", True),
    # overnight Friday 22:00 - 06:00: Saturday 03:00 belongs to Friday's window
    ({"start": "22:00", "end": "06:00", "days": ["fri"]}, "2024-03-16T03:00:00+00:00", True),
    ({"start": "22:00", "end": "06:00", "days": ["fri"]}, "2024-03-15T03:00:00+00:00", False),
    ({"start": "22:00", "end": "06:00", "days": ["fri"]}, "2024-03-15T23:00:00+00:00", True),
    ({"start": "22:00", "end": "06:00", "days": ["fri"]}, "2024-03-16T06:00:00+00:00", False),
    # timezone: 09:00 New York is 13:00 UTC in summer (EDT) and 14:00 UTC in winter (EST)
    ({"start": "09:00", "end": "10:00", "timezone": "America/New_York"}, "2024-07-01T13:30:00+00:00", True),
    ({"start": "09:00", "end": "10:00", "timezone": "America/New_York"}, "2024-01-02T13:30:00+00:00", False),
    ({"start": "09:00", "end": "10:00", "timezone": "America/New_York"}, "2024-01-02T14:30:00+00:00", True),
    # DST change in Berlin (2024-03-31 02:00 -> 03:00): local 01:30 and 03:30 are 00:30/01:30 UTC
    ({"start": "01:00", "end": "04:00", "timezone": "Europe/Berlin"}, "2024-03-31T00:30:00+00:00", True),
    ({"start": "01:00", "end": "04:00", "timezone": "Europe/Berlin"}, "2024-03-31T01:30:00+00:00", True),
    ({"start": "01:00", "end": "04:00", "timezone": "Europe/Berlin"}, "2024-03-31T02:30:00+00:00", False),  # 04:30 CEST
    # the autumn change repeats 02:00-03:00 local: both passes are inside 02:00-03:00
    ({"start": "02:00", "end": "03:00", "timezone": "Europe/Berlin"}, "2024-10-27T00:30:00+00:00", True),
    ({"start": "02:00", "end": "03:00", "timezone": "Europe/Berlin"}, "2024-10-27T01:30:00+00:00", True),
    # date range bounds the opening day
    ({"date_from": "2024-03-01", "date_to": "2024-03-15"}, "2024-03-15T23:59:00+00:00", True),
    ({"date_from": "2024-03-01", "date_to": "2024-03-15"}, "2024-03-16T00:00:00+00:00", False),
    ({"start": "22:00", "end": "06:00", "date_to": "2024-03-15"}, "2024-03-16T05:00:00+00:00", True),
    ({}, "2024-03-16T05:00:00+00:00", True),  # no window given: always
]


@pytest.mark.parametrize("window, moment, expected", SCHEDULE_CASES)
def test_schedule_windows(window, moment, expected):
    assert is_active(Schedule(id="s", **window), at(moment)) is expected


def test_rule_outside_its_schedule_does_not_match_and_schedule_uses_received_time():
    config = parse_config({
        "destinations": [{"id": "d", "type": "filesystem", "path": "out"}],
        "schedules": [{"id": "nights", "start": "20:00", "end": "06:00"}],
        "rulesets": [{"id": "rs", "rules": [{"id": "r", "schedule": "nights", "destinations": ["d"]}]}],
    })
    assert not decide(config, instance(), INGEST).matched  # received 14:30 UTC
    night = INGEST.model_copy(update={"received_at": at("2024-03-15T23:00:00+00:00")})
    assert decide(config, instance(), night).matched


# --- rulesets ------------------------------------------------------------------------------

def ruleset_config(mode="ALL_MATCHES", **ruleset):
    return parse_config({
        "destinations": [{"id": d, "type": "filesystem", "path": d} for d in ("a", "b", "c")],
        "rulesets": [{"id": "rs", "mode": mode, "rules": [
            {"id": "r1", "when": {"tag": "Modality", "value": "CT"}, "destinations": ["a"],
             "actions": [{"action": "set", "tag": "StationName", "value": "ONE"}]},
            {"id": "r2", "destinations": ["b"], "actions": [{"action": "set", "tag": "StationName", "value": "TWO"}]},
            {"id": "r3", "enabled": False, "destinations": ["c"]},
        ], **ruleset}],
    })


def test_all_matches_collects_actions_in_order_and_first_match_stops():
    d = decide(ruleset_config(), instance(), INGEST)
    assert [r.rule_id for r in d.matched] == ["r1", "r2"] and d.destination_ids == ["a", "b"]
    assert [a["value"] for a in d.actions] == ["ONE", "TWO"]
    d = decide(ruleset_config("FIRST_MATCH"), instance(), INGEST)
    assert [r.rule_id for r in d.matched] == ["r1"] and d.destination_ids == ["a"]


def test_ruleset_scoped_to_other_source_is_skipped_and_priority_orders_rulesets():
    config = parse_config({
        "destinations": [{"id": "a", "type": "filesystem", "path": "a"}],
        "rulesets": [
            {"id": "late", "priority": 200, "rules": [{"id": "x", "destinations": ["a"]}]},
            {"id": "stow-only", "priority": 1, "sources": [{"type": "stow"}], "rules": [{"id": "y", "destinations": ["a"]}]},
            {"id": "early", "priority": 10, "sources": [{"type": "cstore", "id": "main"}],
             "rules": [{"id": "z", "destinations": ["a"]}]},
        ],
    })
    assert [(r.ruleset_id, r.rule_id) for r in decide(config, instance(), INGEST).matched] == [("early", "z"), ("late", "x")]


def test_original_attributes_flag_global_and_per_ruleset():
    base = ruleset_config().model_dump(mode="json", by_alias=True)
    assert not decide(parse_config(base), instance(), INGEST).log_original_attributes
    base["settings"]["log_original_attributes"] = True
    assert decide(parse_config(base), instance(), INGEST).log_original_attributes
    base["rulesets"][0]["log_original_attributes"] = False
    assert not decide(parse_config(base), instance(), INGEST).log_original_attributes


def test_dry_run_trace_explains_each_condition():
    d = decide(ruleset_config("FIRST_MATCH"), instance(), INGEST, trace=True)
    by_rule = {t.rule_id: t for t in d.trace}
    assert by_rule["r1"].matched and by_rule["r1"].condition.to_dict() == {
        "condition": "Modality eq 'CT'", "result": True, "why": "value(s) ['CT']"}
    assert by_rule["r2"].reason == "not evaluated: FIRST_MATCH already matched"
    assert by_rule["r3"].reason == "disabled"


# --- validation ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom warns on every access
def test_validation_reports_missing_attributes_and_bad_uids():
    ds = instance()
    del ds.PatientID
    ds.SeriesInstanceUID = "1.2.abc"
    problems = validate_instance(ds, parse_config({}).settings)
    assert problems == ["required attribute PatientID is missing", "SeriesInstanceUID is not a valid UID"]
    relaxed = parse_config({"settings": {"required_attributes": ["SOPInstanceUID"]}}).settings
    assert validate_instance(ds, relaxed) == ["SeriesInstanceUID is not a valid UID"]


def test_validation_refuses_file_meta_in_the_data_set_and_uids_not_encoded_as_ui(tmp_path):
    from shared.dicom.io import read_instance
    from tests.support.badvalues import file_meta_in_dataset_instance, non_string_sop_class_instance

    settings = parse_config({}).settings
    meta_inside = read_instance(file_meta_in_dataset_instance(tmp_path / "meta.dcm"))
    assert validate_instance(meta_inside, settings) == [
        "the data set holds file meta elements ((0002,0016)), which belong in the file meta information only "
        "(PS3.10 7.1)"]
    number = read_instance(non_string_sop_class_instance(tmp_path / "number.dcm"))
    assert validate_instance(number, settings) == ["SOPClassUID is encoded with the VR US, not UI (PS3.6)"]


# --- bad config ------------------------------------------------------------------------------

@pytest.mark.parametrize("when, field, words", [
    ({"tag": "PatientNmae", "value": "x"}, "when.tag.tag", "unknown DICOM keyword 'PatientNmae'"),
    ({"tag": "StudyDescription", "op": "regex", "value": "(unclosed"}, "when.tag", "invalid regular expression"),
    ({"tag": "StudyDescription", "op": "regex", "value": r"(a)\1"}, "when.tag", "invalid regular expression"),
    ({"tag": "StudyDate", "op": "gt", "value": "last week"}, "when.tag", "cannot be compared with a DA value"),
    ({"tag": "Modality", "op": "in", "value": "CT"}, "when.tag", "non-empty list"),
    ({"any": []}, "when.any.any", "at least 1"),
    ({"association": "source_ip", "value": "10.0.0.300/8"}, "when.association", "not an IP network"),
    ({"association": "peer", "value": "x"}, "when.association.association", "calling_ae"),
])
def test_bad_conditions_are_refused_naming_the_field(when, field, words):
    with pytest.raises(ConfigError) as err:
        matches(when)
    assert f"rulesets.0.rules.0.{field}" in str(err.value) and words in str(err.value), str(err.value)


@pytest.mark.parametrize("extra, words", [
    ({"schedules": [{"id": "s", "timezone": "Mars/Olympus"}]}, "schedules.0.timezone: unknown IANA timezone"),
    ({"schedules": [{"id": "s", "start": "25:00"}]}, "schedules.0.start"),
    ({"schedules": [{"id": "s", "days": ["funday"]}]}, "schedules.0.days.0"),
])
def test_bad_schedules_are_refused(extra, words):
    with pytest.raises(ConfigError) as err:
        parse_config(extra)
    assert words in str(err.value), str(err.value)


def test_unknown_schedule_reference_is_refused():
    with pytest.raises(ConfigError, match=r"rulesets\[rs\]\.rules\[r\]\.schedule: unknown schedule 'nope'"):
        parse_config({"rulesets": [{"id": "rs", "rules": [{"id": "r", "schedule": "nope"}]}]})


# --- properties ------------------------------------------------------------------------------

MODALITIES = ["CT", "MR", "US", "CR", "NM"]
AES = ["A", "B", "C"]

rule_strategy = st.fixed_dictionaries({
    "modality": st.one_of(st.none(), st.sampled_from(MODALITIES)),
    "ae": st.one_of(st.none(), st.sampled_from(AES)),
    "enabled": st.booleans(),
})


def build(rules, mode):
    out = []
    for n, r in enumerate(rules):
        conds = []
        if r["modality"]:
            conds.append({"tag": "Modality", "value": r["modality"]})
        if r["ae"]:
            conds.append({"association": "calling_ae", "value": r["ae"]})
        out.append({"id": f"r{n}", "enabled": r["enabled"], "when": {"all": conds} if conds else None,
                    "destinations": ["d"]})
    return parse_config({"destinations": [{"id": "d", "type": "filesystem", "path": "d"}],
                         "rulesets": [{"id": "rs", "mode": mode, "rules": out}]})


@settings(max_examples=200, deadline=None)
@given(rules=st.lists(rule_strategy, max_size=12), modality=st.sampled_from(MODALITIES), ae=st.sampled_from(AES),
       mode=st.sampled_from(["FIRST_MATCH", "ALL_MATCHES"]))
def test_index_agrees_with_evaluating_every_rule(rules, modality, ae, mode):
    """The indexed fast path and the exhaustive (trace) path decide the same; FIRST_MATCH
    applies at most one rule, and it is the first one that matches."""
    config = build(rules, mode)
    ds = instance()
    ds.Modality = modality
    ingest = INGEST.model_copy(update={"calling_ae": ae})
    fast = [r.rule_id for r in decide(config, ds, ingest).matched]
    full = [r.rule_id for r in decide(config, ds, ingest, trace=True).matched]
    expected = [f"r{n}" for n, r in enumerate(rules)
                if r["enabled"] and r["modality"] in (None, modality) and r["ae"] in (None, ae)]
    if mode == "FIRST_MATCH":
        expected = expected[:1]
        assert len(fast) <= 1
    assert fast == full == expected
