"""shared/spanner/query.py: QIDO-RS queries parsed and checked (every problem named by
its parameter), said as QIDO-RS parameters and as C-FIND identifiers (level, keys,
VRs, values, return keys), and C-FIND responses read back as DICOM JSON."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from shared.spanner.query import (
    RETURN_KEYS,
    QidoQuery,
    QueryError,
    cache_key,
    from_cfind,
    parse_qido,
    qido_path,
    to_cfind_identifier,
    to_qido_params,
)

GOOD = [
    # (level, params, path uids, expected match, expected includefield)
    ("study", [("PatientName", "Doe^J*"), ("StudyDate", "20200101-20201231")], {},
     {"StudyDate": "20200101-20201231", "PatientName": "Doe^J*"}, ()),
    ("study", [("00100020", "P1"), ("StudyDate", "-20201231"), ("StudyTime", "0800-")], {},
     {"StudyDate": "-20201231", "StudyTime": "0800-", "PatientID": "P1"}, ()),
    ("study", [("StudyDate", "20200101-"), ("StudyInstanceUID", "1.2.3\\1.2.4")], {},
     {"StudyDate": "20200101-", "StudyInstanceUID": "1.2.3\\1.2.4"}, ()),
    ("study", [("StudyInstanceUID", "1.2.3,1.2.4"), ("includefield", "StudyDescription,00081030"),
               ("includefield", "PatientAge")], {},
     {"StudyInstanceUID": "1.2.3,1.2.4"}, ("StudyDescription", "PatientAge")),
    ("study", [("PatientName", ""), ("includefield", "all"), ("includefield", "PatientAge")], {},
     {"PatientName": ""}, ("all",)),
    ("study", [("PatientName", "Dö?"), ("spanner_config_id", "enterprise")], {}, {"PatientName": "Dö?"}, ()),
    ("series", [("Modality", "CT"), ("StudyDate", "20200101")], {},  # /series takes study keys too
     {"StudyDate": "20200101", "Modality": "CT"}, ()),
    ("series", [("SeriesNumber", "3"), ("RequestAttributesSequence.ScheduledProcedureStepID", "S1")],
     {"study_uid": "1.2.3"}, {"SeriesNumber": "3", "RequestAttributesSequence.ScheduledProcedureStepID": "S1"}, ()),
    ("instance", [("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), ("InstanceNumber", "7")],
     {"study_uid": "1.2.3", "series_uid": "1.2.3.4"},
     {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "InstanceNumber": "7"}, ()),
    ("instance", [("AcquisitionDateTime", "20200101120000-0500"), ("Modality", "MR")], {"study_uid": "1.2.3"},
     {"AcquisitionDateTime": "20200101120000-0500", "Modality": "MR"}, ()),
    ("instance", [("AcquisitionDateTime", "2020-20210101120000.5+0100")], {},
     {"AcquisitionDateTime": "2020-20210101120000.5+0100"}, ()),
]


@pytest.mark.parametrize("level, params, path, match, includefield", GOOD)
def test_good_queries_parse(level, params, path, match, includefield):
    query = parse_qido(level, params, **path)
    assert query.level == level
    assert query.match == match and list(query.match) == list(match)  # keywords, in tag order
    assert query.includefield == includefield
    assert (query.study_uid, query.series_uid) == (path.get("study_uid"), path.get("series_uid"))


def test_limit_offset_fuzzymatching_parse():
    query = parse_qido("study", [("limit", "25"), ("offset", "50"), ("fuzzymatching", "true")], max_limit=100)
    assert (query.limit, query.offset, query.fuzzymatching) == (25, 50, True)
    assert parse_qido("study", [("fuzzymatching", "false")]) == QidoQuery(level="study")


BAD = [
    # (level, params, path uids, the reasons' expected texts)
    ("study", [("Foo", "1")], {}, ["unknown query key 'Foo'"]),
    ("study", [("00091001", "1")], {}, ["unknown query key '00091001'"]),  # private: no keyword
    ("study", [("Modality", "CT")], {}, ["Modality: a series-level key, not allowed in this study-level query"]),
    ("series", [("StudyDate", "20200101")], {"study_uid": "1.2.3"}, ["StudyDate: a study-level key"]),
    ("study", [("PixelData", "")], {}, ["PixelData: not a matching key of any level"]),
    ("study", [("StudyDate", "2020-01-01")], {}, ["StudyDate: '2020-01-01' is not a DA value or range"]),
    ("study", [("StudyDate", "20201231-20200101")], {}, ["StudyDate: the range '20201231-20200101' starts after"]),
    ("study", [("StudyDate", "20200230")], {}, ["StudyDate: '20200230' is not a DA value"]),
    ("study", [("StudyDate", "20200101-20200201-20200301")], {}, ["StudyDate:"]),
    ("study", [("StudyDate", "-")], {}, ["StudyDate: '-' is not a DA value or range"]),
    ("study", [("StudyTime", "2500")], {}, ["StudyTime: '2500' is not a TM value"]),
    ("study", [("StudyInstanceUID", "1.2.abc\\1.3")], {}, ["StudyInstanceUID: '1.2.abc' is not a UID"]),
    ("study", [("StudyInstanceUID", "1.2.*")], {}, ["StudyInstanceUID: '1.2.*' is not a UID"]),
    ("study", [("NumberOfStudyRelatedSeries", "many")], {}, ["NumberOfStudyRelatedSeries: 'many' is not an integer"]),
    ("study", [("PatientName", "A"), ("PatientName", "B")], {}, ["PatientName: given more than once"]),
    ("study", [("ReferencedStudySequence", "1.2")], {}, ["ReferencedStudySequence: a sequence matches through"]),
    ("study", [("PatientName.PatientID", "1")], {}, ["PatientName.PatientID: PatientName is not a sequence"]),
    ("study", [("limit", "0")], {}, ["limit: '0' is not a whole number from 1 to 1000"]),
    ("study", [("limit", "100001")], {}, ["limit: '100001' is not a whole number from 1 to 1000"]),
    ("study", [("limit", "x")], {}, ["limit: 'x' is not a whole number"]),
    ("study", [("limit", "5"), ("limit", "6")], {}, ["limit: given 2 times"]),
    ("study", [("offset", "-1")], {}, ["offset: '-1' is not a whole number from 0 or more"]),
    ("study", [("offset", "1.5")], {}, ["offset: '1.5' is not a whole number"]),
    ("study", [("fuzzymatching", "yes")], {}, ["fuzzymatching: 'yes' is not true or false"]),
    ("study", [("includefield", "Nope")], {}, ["includefield: unknown attribute 'Nope'"]),
    ("series", [], {"study_uid": "1.2.x"}, ["study UID in the path: '1.2.x' is not a UID"]),
    ("series", [], {"study_uid": "1.2", "series_uid": "1.3"}, ["series UID in the path: only instance queries"]),
]


@pytest.mark.parametrize("level, params, path, expected", BAD)
def test_each_bad_query_names_its_parameter(level, params, path, expected):
    with pytest.raises(QueryError) as caught:
        parse_qido(level, params, **path)
    assert len(caught.value.reasons) == len(expected)
    for reason, start in zip(caught.value.reasons, expected):
        assert reason.startswith(start), reason
    assert str(caught.value) == "; ".join(caught.value.reasons)


def test_every_problem_is_reported_at_once():
    with pytest.raises(QueryError) as caught:
        parse_qido("study", [("Foo", "1"), ("StudyDate", "2020-01-01"), ("limit", "0"), ("offset", "-1")])
    assert [r.split(":")[0].split(" '")[0] for r in caught.value.reasons] == [
        "unknown query key", "StudyDate", "limit", "offset"]


def test_to_qido_params_round_trips_without_paging():
    params = [("00100010", "Doe^*"), ("StudyDate", "20200101-"), ("includefield", "00081030"),
              ("limit", "10"), ("offset", "20"), ("fuzzymatching", "true")]
    query = parse_qido("study", params)
    sent = to_qido_params(query)
    assert sent == [("StudyDate", "20200101-"), ("PatientName", "Doe^*"), ("includefield", "StudyDescription"),
                    ("fuzzymatching", "true")]
    again = parse_qido("study", sent)
    assert again == QidoQuery(level="study", match=query.match, includefield=query.includefield, fuzzymatching=True)
    assert to_qido_params(again) == sent


@pytest.mark.parametrize("path, level, expected", [
    ({}, "study", "studies"), ({}, "series", "series"), ({"study_uid": "1.2"}, "series", "studies/1.2/series"),
    ({}, "instance", "instances"), ({"study_uid": "1.2"}, "instance", "studies/1.2/instances"),
    ({"study_uid": "1.2", "series_uid": "1.3"}, "instance", "studies/1.2/series/1.3/instances"),
])
def test_qido_path(path, level, expected):
    assert qido_path(parse_qido(level, [], **path)) == expected


def elements(ds: Dataset) -> dict[str, tuple[str, object]]:
    return {e.keyword: (e.VR, e.value) for e in ds}


def test_cfind_identifier_of_a_study_query():
    query = parse_qido("study", [("PatientName", "Doe^J*"), ("StudyDate", "20200101-20201231"),
                                 ("StudyInstanceUID", "1.2.3,1.2.4"), ("StudyTime", "-1200"),
                                 ("includefield", "StudyDescription"), ("fuzzymatching", "true")])
    found = elements(to_cfind_identifier(query))
    assert found.pop("QueryRetrieveLevel") == ("CS", "STUDY")
    assert found.pop("PatientName") == ("PN", "Doe^J*")
    assert found.pop("StudyDate") == ("DA", "20200101-20201231")
    assert found.pop("StudyTime") == ("TM", "-1200")
    assert found.pop("StudyInstanceUID") == ("UI", ["1.2.3", "1.2.4"])
    assert found.pop("StudyDescription") == ("LO", None)
    # the rest: the level's return keys, empty, with their dictionary VRs; nothing for fuzzymatching
    assert set(found) == set(RETURN_KEYS["study"]) - {"PatientName", "StudyDate", "StudyTime", "StudyInstanceUID"}
    assert found["NumberOfStudyRelatedSeries"] == ("IS", None)
    assert found["ModalitiesInStudy"] == ("CS", None)
    assert found["RetrieveAETitle"] == ("AE", None)
    assert found["ReferringPhysicianName"] == ("PN", None)


def test_cfind_identifier_of_series_and_instance_queries_carry_the_path():
    series = to_cfind_identifier(parse_qido(
        "series", [("Modality", "CT"), ("SeriesNumber", "3"), ("RequestAttributesSequence.ScheduledProcedureStepID",
                                                              "S1")], study_uid="1.2.3"))
    assert series.QueryRetrieveLevel == "SERIES"
    assert (series.StudyInstanceUID, series.Modality, series.SeriesNumber) == ("1.2.3", "CT", 3)
    assert series["SeriesInstanceUID"].VR == "UI" and series["SeriesInstanceUID"].is_empty
    item = series.RequestAttributesSequence[0]  # sequence matching: one item (PS3.4 C.2.2.2.6)
    assert len(series.RequestAttributesSequence) == 1 and elements(item) == {"ScheduledProcedureStepID": ("SH", "S1")}
    instance = to_cfind_identifier(parse_qido("instance", [("Rows", "512"), ("includefield", "all")],
                                              study_uid="1.2.3", series_uid="1.2.3.4"))
    assert instance.QueryRetrieveLevel == "IMAGE"
    assert (instance.StudyInstanceUID, instance.SeriesInstanceUID, instance.Rows) == ("1.2.3", "1.2.3.4", 512)
    assert instance["Rows"].VR == "US"
    assert {"SOPInstanceUID", "SOPClassUID", "InstanceNumber", "NumberOfFrames", "AcquisitionDateTime"} <= set(
        elements(instance))  # includefield=all: every instance key
    assert "PatientName" not in instance and "Modality" not in instance  # the path fixes study and series


def test_cfind_identifier_says_its_character_set_for_non_ascii_values():
    assert to_cfind_identifier(parse_qido("study", [("PatientName", "Dö*")])).SpecificCharacterSet == "ISO_IR 192"
    assert "SpecificCharacterSet" not in to_cfind_identifier(parse_qido("study", [("PatientName", "Do*")]))


def test_cfind_response_as_dicom_json():
    response = Dataset()
    response.QueryRetrieveLevel = "STUDY"
    response.SpecificCharacterSet = "ISO_IR 100"
    response.PatientName = "Doe^Jane"
    response.StudyDate = "20200315"
    response.StudyInstanceUID = "1.2.3"
    response.NumberOfStudyRelatedSeries = 4
    response.ModalitiesInStudy = ["CT", "SR"]
    response.AccessionNumber = None
    response.add_new(0x00091001, "LO", None)  # an empty key the SCP added on its own
    row = from_cfind(response)
    assert row == {
        "00080020": {"vr": "DA", "Value": ["20200315"]},
        "00080050": {"vr": "SH"},
        "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
        "00091001": {"vr": "LO"},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00201206": {"vr": "IS", "Value": [4]},
    }
    asked = parse_qido("study", [("PatientName", "Doe*")])
    assert "00091001" not in from_cfind(response, asked) and "00080050" in from_cfind(response, asked)


def test_cache_key_is_stable_and_ignores_paging_and_order():
    a = parse_qido("study", [("PatientName", "Doe*"), ("StudyDate", "20200101-"), ("limit", "5")])
    b = parse_qido("study", [("StudyDate", "20200101-"), ("00100010", "Doe*"), ("offset", "10")])
    assert a.match == b.match
    assert cache_key("s1", a) == cache_key("s1", b)
    assert len(cache_key("s1", a)) == 64
    assert cache_key("s1", a) != cache_key("s2", a)
    assert cache_key("s1", a) != cache_key("s1", parse_qido("study", [("PatientName", "Doe*")]))
    assert cache_key("s1", a) != cache_key("s1", parse_qido("study", [("PatientName", "Doe*"), ("StudyDate", "20200101-"),
                                                                      ("fuzzymatching", "true")]))


def test_cfind_identifier_survives_the_wire():
    """Encoded as C-FIND sends it (Implicit VR Little Endian, PS3.5 A.1), read back and
    turned into DICOM JSON: the values a source's SCP would see and echo."""
    query = parse_qido("series", [("PatientName", "Dö^J*"), ("StudyDate", "20200101-20201231"),
                                  ("StudyInstanceUID", "1.2.3,1.2.4"), ("SeriesNumber", "3"),
                                  ("RequestAttributesSequence.ScheduledProcedureStepID", "S1")])
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, to_cfind_identifier(query))
    row = from_cfind(read_dataset(DicomBytesIO(out.getvalue()), True, True), query)
    assert row["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Dö^J*"}]}
    assert row["00080020"] == {"vr": "DA", "Value": ["20200101-20201231"]}
    assert row["0020000D"] == {"vr": "UI", "Value": ["1.2.3", "1.2.4"]}
    assert row["00200011"] == {"vr": "IS", "Value": [3]}
    assert row["00400275"]["Value"] == [{"00400009": {"vr": "SH", "Value": ["S1"]}}]
    assert row["0020000E"] == {"vr": "UI"} and "00080052" not in row and "00080005" not in row


def test_equal_queries_hash_alike():
    a = parse_qido("study", [("PatientName", "Doe*"), ("StudyDate", "20200101-")])
    b = parse_qido("study", [("StudyDate", "20200101-"), ("00100010", "Doe*")])
    assert a == b and hash(a) == hash(b) and len({a, b, parse_qido("study", [])}) == 2
