"""Poller state: the lookback bound, what the seen-studies map keeps, and the source
config fields that drive them."""

import pytest

from shared.config import ConfigError, parse_config
from shared.inputs.pollers.state import MAX_STUDIES, SourceState, lookback


def test_lookback_bound():
    assert lookback(None, 7) is None  # first run: no bound
    assert lookback("20240301", 7) == "20240223"
    assert lookback("20240301", 0) == "20240301"
    assert lookback("20250105", 10) == "20241226"


def test_prune_keeps_the_lookback_window_and_unfinished_studies():
    state = SourceState("s", studies={
        "in-window": ["20240225", 3, 1],
        "too-old": ["20240101", 3, 1],
        "too-old-unfinished": ["20240101", 3, 0],  # asked for by UID until done
        "undated": ["", 1, 1],
    })
    state.prune("20240223")
    assert set(state.studies) == {"in-window", "too-old-unfinished", "undated"}
    assert state.open_studies() == ["too-old-unfinished"]


def test_prune_beyond_the_cap_drops_the_oldest_complete_studies_first():
    studies = {f"s{n}": [f"2024{n % 12 + 1:02d}01", 1, 1] for n in range(MAX_STUDIES + 10)}
    studies["open-and-old"] = ["19990101", 1, 0]
    state = SourceState("s", studies=studies)
    state.prune(None)
    assert len(state.studies) == MAX_STUDIES and "open-and-old" in state.studies
    assert min(v[0] for u, v in state.studies.items() if u != "open-and-old") >= "20240101"


def test_state_document_round_trip_keeps_the_change_log_position():
    class Docs(dict):
        def get(self, collection, doc_id):
            return super().get((collection, doc_id))

        def set(self, collection, doc_id, doc):
            self[(collection, doc_id)] = doc

    docs = Docs()
    state = SourceState("s", changes_seq=42)
    state.counters["already_had"] = 5
    state.save(docs)
    again = SourceState.load(docs, "s")
    assert again.changes_seq == 42 and again.counters["already_had"] == 5


SOURCE = {"id": "web", "type": "dicomweb_poller", "url": "http://pacs/dicom-web"}


def test_source_defaults():
    source = parse_config({"sources": [SOURCE]}).sources[0]
    assert source.lookback_days == 7 and source.orthanc_changes is None
    source = parse_config({"sources": [SOURCE | {"orthanc_changes": {"url": "http://pacs:8042"}}]}).sources[0]
    assert source.orthanc_changes.url == "http://pacs:8042" and source.orthanc_changes.auth.type == "none"


@pytest.mark.parametrize("source, field, words", [
    (SOURCE | {"lookback_days": -1}, "sources.0.dicomweb_poller.lookback_days", "greater than or equal to 0"),
    (SOURCE | {"lookback_days": "a week"}, "sources.0.dicomweb_poller.lookback_days", "valid integer"),
    (SOURCE | {"orthanc_changes": {"url": "pacs:8042"}}, "sources.0.dicomweb_poller.orthanc_changes.url",
     "should match pattern"),
    ({"id": "p", "type": "dimse_poller", "ae_title": "PACS", "host": "h", "port": 104,
      "orthanc_changes": {"url": "http://h:8042", "auth": {"type": "basic"}}},
     "sources.0.dimse_poller.orthanc_changes.auth", "needs username, password"),
    ({"id": "g", "type": "healthcare", "project": "p", "location": "l", "dataset": "d", "dicom_store": "s",
      "orthanc_changes": {"url": "http://h:8042"}}, "sources.0.healthcare.orthanc_changes", "Extra inputs"),
])
def test_bad_source_fields_are_named(source, field, words):
    with pytest.raises(ConfigError) as err:
        parse_config({"sources": [source]})
    message = str(err.value)
    assert field in message and words in message, message
