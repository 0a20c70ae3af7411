"""shared/spanner/merge.py: rows from several sources merged by UID, never by position;
the priority source's values win; counts are never summed; every source holding a row
recorded on it (Retrieve AE Title, Retrieve URL, the private block)."""

from __future__ import annotations

import copy

import pytest

from shared.spanner.merge import SPANNER_CREATOR, SourceAnswer, apply_paging, merge, sources_of

S1, S2, S3 = "1.2.840.1", "1.2.840.2", "1.2.840.3"


def pn(name):
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}


def study(uid, name="Doe^Jane", date="20200101", series=2, instances=10, **more):
    row = {"0020000D": {"vr": "UI", "Value": [uid]}, "00100010": pn(name), "00080020": {"vr": "DA", "Value": [date]},
           "00201206": {"vr": "IS", "Value": [series]}, "00201208": {"vr": "IS", "Value": [instances]}}
    row.update(more)
    return row


def value(row, tag):
    return row[tag]["Value"][0] if "Value" in row.get(tag, {}) else None


def by_uid(rows, tag="0020000D"):
    return {value(r, tag): r for r in rows}


def dimse(source_id, priority, order, rows, ae=None):
    return SourceAnswer(source_id, priority, order, rows, retrieve_ae=ae or source_id.upper())


def web(source_id, priority, order, rows):
    return SourceAnswer(source_id, priority, order, rows, retrieve_url=f"http://{source_id}/dicom-web/")


def test_a_study_on_two_sources_is_one_row_listing_both():
    rows = merge("study", [dimse("north", 10, 0, [study(S1)]), web("south", 20, 1, [study(S1)])])
    assert len(rows) == 1
    row = rows[0]
    assert sources_of(row) == ["north", "south"]
    assert row["00990010"] == {"vr": "LO", "Value": [SPANNER_CREATOR]}
    assert row["00991001"] == {"vr": "LO", "Value": ["north", "south"]}
    assert row["00080054"] == {"vr": "AE", "Value": ["NORTH"]}
    assert row["00081190"] == {"vr": "UR", "Value": [f"http://south/dicom-web/studies/{S1}"]}


def test_every_dimse_source_is_a_retrieve_ae_title_in_priority_order():
    answers = [dimse("c", 30, 0, [study(S1)]), dimse("a", 10, 2, [study(S1)]), dimse("b", 10, 3, [study(S1)])]
    row, = merge("study", answers)
    assert row["00080054"]["Value"] == ["A", "B", "C"]
    assert sources_of(row) == ["a", "b", "c"]
    assert "00081190" not in row


def test_conflicting_values_the_priority_source_wins_whatever_the_list_order():
    low = dimse("low", 50, 0, [study(S1, name="Doe^Jane", **{"00080050": {"vr": "SH", "Value": ["A-LOW"]}})])
    high = dimse("high", 5, 1, [study(S1, name="DOE^JANE^^^", **{"00080050": {"vr": "SH"}})])
    row, = merge("study", [low, high])
    assert value(row, "00100010") == {"Alphabetic": "DOE^JANE^^^"}
    assert sources_of(row) == ["high", "low"]
    # the winner had no accession number (an empty element): the other source's fills it
    assert row["00080050"] == {"vr": "SH", "Value": ["A-LOW"]}


def test_equal_priorities_the_first_listed_wins():
    a = dimse("a", 10, 0, [study(S1, name="A^A")])
    b = dimse("b", 10, 1, [study(S1, name="B^B")])
    assert value(merge("study", [b, a])[0], "00100010") == {"Alphabetic": "A^A"}


def test_attributes_only_a_lower_source_has_are_added():
    high = dimse("high", 1, 0, [study(S1)])
    low = web("low", 2, 1, [study(S1, **{"00081030": {"vr": "LO", "Value": ["CT HEAD"]}})])
    row, = merge("study", [high, low])
    assert row["00081030"] == {"vr": "LO", "Value": ["CT HEAD"]}


def test_counts_are_never_summed():
    """The known wrong merge: NumberOfStudyRelatedSeries added up across servers."""
    high = dimse("high", 1, 0, [study(S1, series=3, instances=30)])
    low = dimse("low", 2, 1, [study(S1, series=2, instances=20)])
    row, = merge("study", [low, high])
    assert (value(row, "00201206"), value(row, "00201208")) == (3, 30)
    series_rows = [{"0020000D": {"vr": "UI", "Value": [S1]}, "0020000E": {"vr": "UI", "Value": ["1.5"]},
                    "00201209": {"vr": "IS", "Value": [n]}} for n in (7, 9)]
    row, = merge("series", [dimse("a", 2, 0, [series_rows[0]]), dimse("b", 1, 1, [series_rows[1]])])
    assert value(row, "00201209") == 9


def test_rows_are_merged_by_uid_not_by_position():
    """The known wrong merge: row i of one source taken as row i of the other."""
    north = dimse("north", 1, 0, [study(S1, name="One"), study(S2, name="Two")])
    south = dimse("south", 2, 1, [study(S2, name="Two"), study(S3, name="Three")])
    rows = by_uid(merge("study", [north, south]))
    assert set(rows) == {S1, S2, S3}
    assert [value(rows[uid], "00100010")["Alphabetic"] for uid in (S1, S2, S3)] == ["One", "Two", "Three"]
    assert sources_of(rows[S1]) == ["north"] and sources_of(rows[S2]) == ["north", "south"]
    assert sources_of(rows[S3]) == ["south"]


def series(study_uid, series_uid, number=1):
    return {"0020000D": {"vr": "UI", "Value": [study_uid]}, "0020000E": {"vr": "UI", "Value": [series_uid]},
            "00200011": {"vr": "IS", "Value": [number]}}


def test_series_are_keyed_by_study_and_series():
    a = dimse("a", 1, 0, [series(S1, "9.1", 2), series(S1, "9.2", 1)])
    b = web("b", 2, 1, [series(S1, "9.1", 2), series(S2, "9.1", 1)])  # the same series UID in another study
    rows = merge("series", [a, b])
    assert [(value(r, "0020000D"), value(r, "0020000E")) for r in rows] == [
        (S1, "9.2"), (S1, "9.1"), (S2, "9.1")]  # by study, then series number
    assert [sources_of(r) for r in rows] == [["a"], ["a", "b"], ["b"]]
    assert rows[1]["00081190"]["Value"] == [f"http://b/dicom-web/studies/{S1}/series/9.1"]


def test_instances_are_keyed_by_study_series_and_sop():
    def instance(sop, number, series_uid="9.1"):
        return series(S1, series_uid) | {"00080018": {"vr": "UI", "Value": [sop]},
                                         "00200013": {"vr": "IS", "Value": [number]}}
    a = web("a", 1, 0, [instance("7.2", 2), instance("7.1", 1)])
    b = dimse("b", 2, 1, [instance("7.1", 1), instance("7.1", 1, series_uid="9.2")])
    rows = merge("instance", [a, b])
    assert [(value(r, "0020000E"), value(r, "00080018")) for r in rows] == [("9.1", "7.1"), ("9.1", "7.2"),
                                                                            ("9.2", "7.1")]
    assert [sources_of(r) for r in rows] == [["a", "b"], ["a"], ["b"]]
    assert rows[0]["00081190"]["Value"] == [f"http://a/dicom-web/studies/{S1}/series/9.1/instances/7.1"]
    assert rows[0]["00080054"]["Value"] == ["B"]


def test_deduplicate_off_gives_one_row_per_source():
    rows = merge("study", [web("south", 2, 1, [study(S1, name="S")]), dimse("north", 1, 0, [study(S1, name="N")])],
                 deduplicate=False)
    assert [sources_of(r) for r in rows] == [["north"], ["south"]]
    assert [value(r, "00100010")["Alphabetic"] for r in rows] == ["N", "S"]
    assert rows[0]["00080054"]["Value"] == ["NORTH"] and "00081190" not in rows[0]
    assert rows[1]["00081190"]["Value"] == [f"http://south/dicom-web/studies/{S1}"] and "00080054" not in rows[1]


def test_a_row_without_its_uid_is_kept_not_merged():
    bare = {"00100010": pn("No^Uid")}
    rows = merge("study", [dimse("a", 1, 0, [bare, study(S1)]), dimse("b", 2, 1, [dict(bare)])])
    assert len(rows) == 3
    assert value(rows[0], "0020000D") == S1
    assert [value(r, "00100010")["Alphabetic"] for r in rows[1:]] == ["No^Uid", "No^Uid"]
    assert [sources_of(r) for r in rows[1:]] == [["a"], ["b"]]
    # a series row needs its series UID too: a study UID alone is no key
    assert len(merge("series", [dimse("a", 1, 0, [study(S1)]), dimse("b", 2, 1, [study(S1)])])) == 2


def test_studies_newest_first_then_by_uid():
    rows = merge("study", [dimse("a", 1, 0, [study(S3, date="20190101"), study(S2, date="20210101"),
                                             study(S1, date="20210101")])])
    assert [value(r, "0020000D") for r in rows] == [S1, S2, S3]


def test_the_input_rows_are_not_changed():
    answers = [dimse("a", 1, 0, [study(S1)]), web("b", 2, 1, [study(S1, **{"00081030": {"vr": "LO"}})])]
    before = copy.deepcopy(answers)
    merge("study", answers)
    assert answers == before


def test_private_elements_come_from_the_winner_only_and_blocks_do_not_collide():
    """A source's own private block keeps its creator; ours takes the next free block
    (PS3.5 7.8.1); another source's private elements (a different creator at the same
    element numbers) are not mixed in."""
    mine = study(S1, **{"00990010": {"vr": "LO", "Value": ["OTHER VENDOR"]},
                        "00991001": {"vr": "LO", "Value": ["theirs"]}})
    other = study(S1, **{"00990010": {"vr": "LO", "Value": ["THIRD"]}, "00991002": {"vr": "LO", "Value": ["x"]}})
    row, = merge("study", [dimse("a", 1, 0, [mine]), dimse("b", 2, 1, [other])])
    assert row["00990010"]["Value"] == ["OTHER VENDOR"] and row["00991001"]["Value"] == ["theirs"]
    assert "00991002" not in row
    assert row["00990011"]["Value"] == [SPANNER_CREATOR] and row["00991101"]["Value"] == ["a", "b"]
    assert sources_of(row) == ["a", "b"]


@pytest.mark.parametrize("limit, offset, expected", [(2, 0, [0, 1]), (2, 3, [3, 4]), (None, 3, [3, 4]),
                                                     (10, 5, []), (1, 4, [4])])
def test_apply_paging(limit, offset, expected):
    assert apply_paging(list(range(5)), limit, offset) == expected
