"""The spanner's fan-out and merge (shared/spanner/engine.py) over the eight Orthanc
servers of tests/support/spanner_bed.py (four by QIDO-RS, four by C-FIND, one of them
behind a delaying proxy) and two sources that are down: the merged answer against what
each server holds, one row per study with every source that holds it, the priority
source's values, counts never summed, partial results named, fail_fast, the cache."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.adapters.secrets import LocalSecrets
from shared.config import parse_config
from shared.spanner.engine import SpanFailed, Spanning
from shared.spanner.merge import sources_of
from shared.spanner.query import parse_qido
from tests.support.spanner_bed import spanner_bed  # noqa: F401 (fixture)

STUDY_UID, SERIES_COUNT, PATIENT_NAME = "0020000D", "00201206", "00100010"


def _config(bed, **spanner):
    members = [{"source": s["id"], "priority": n} for n, s in enumerate(bed.sources)]
    return parse_config({"sources": [*bed.sources, *bed.down],
                         "spanners": [{"id": "all", "sources": members, "timeout_s": 5, **spanner}]})


def _run(config, query, engine=None):
    engine = engine or Spanning(LocalSecrets())
    return asyncio.run(engine.query(config.spanners[0], {s.id: s for s in config.sources}, query)), engine


def _value(row: dict, tag: str):
    values = row.get(tag, {}).get("Value") or [None]
    return values[0]


@pytest.fixture(autouse=True)
def no_delay(spanner_bed):  # noqa: F811
    spanner_bed.set_delay(0)
    yield
    spanner_bed.set_delay(0)


def test_every_study_once_with_every_source_that_holds_it(spanner_bed):  # noqa: F811
    bed = spanner_bed
    result, _ = _run(_config(bed), parse_qido("study", [("includefield", "NumberOfStudyRelatedSeries")]))
    assert [s.state for s in result.statuses] == ["ok"] * 8 and result.warning() is None
    by_uid = {_value(row, STUDY_UID): row for row in result.rows}
    assert len(by_uid) == len(result.rows) == len(bed.studies)  # de-duplicated: one row per study
    order = [s["id"] for s in bed.sources]
    for uid, row in by_uid.items():
        holders = [sid for sid in order if uid in bed.truth[sid]]
        assert sources_of(row) == holders, uid  # every source that holds it, in priority order
        # never summed: the priority source's count
        assert int(_value(row, SERIES_COUNT)) == bed.truth[holders[0]][uid], uid
    conflict = by_uid[bed.conflict_study]
    first = next(sid for sid in order if bed.conflict_study in bed.truth[sid])
    assert _value(conflict, PATIENT_NAME)["Alphabetic"] == bed.names[first][bed.conflict_study]


def test_the_priority_decides_a_conflicting_value(spanner_bed):  # noqa: F811
    bed = spanner_bed
    holders = [s["id"] for s in bed.sources if bed.conflict_study in bed.truth[s["id"]]]
    names = {bed.names[sid][bed.conflict_study] for sid in holders}
    assert len(names) == 2  # the bed's conflict
    for winner in holders:
        members = [{"source": s["id"], "priority": 0 if s["id"] == winner else 50} for s in bed.sources]
        config = parse_config({"sources": bed.sources, "spanners": [{"id": "all", "sources": members}]})
        result, _ = _run(config, parse_qido("study", [("StudyInstanceUID", bed.conflict_study)]))
        [row] = result.rows
        assert _value(row, PATIENT_NAME)["Alphabetic"] == bed.names[winner][bed.conflict_study]
        assert sources_of(row)[0] == winner


def test_a_slow_and_a_down_source_give_partial_results_naming_them(spanner_bed):  # noqa: F811
    bed = spanner_bed
    members = [{"source": s["id"], "priority": n} for n, s in enumerate(bed.sources)]
    members += [{"source": d["id"], "priority": 90} for d in bed.down]
    slow_id = bed.slow["id"]
    members = [{**m, "timeout_s": 1.0} if m["source"] == slow_id else m for m in members]
    config = parse_config({"sources": [*bed.sources, *bed.down],
                           "spanners": [{"id": "all", "sources": members, "timeout_s": 5, "retry_attempts": 1}]})
    bed.set_delay(3.0)
    result, _ = _run(config, parse_qido("study", []))
    states = {s.source: s.state for s in result.statuses}
    assert states[slow_id] == "timeout"
    assert {states[d["id"]] for d in bed.down} == {"failed"}
    assert all(states[s["id"]] == "ok" for s in bed.sources if s["id"] != slow_id)
    warning = result.warning()
    assert warning.startswith("299 ") and slow_id in warning and all(d["id"] in warning for d in bed.down)
    found = {_value(row, STUDY_UID) for row in result.rows}
    reachable = {uid for s in bed.sources if s["id"] != slow_id for uid in bed.truth[s["id"]]}
    assert found == reachable  # what the others hold, nothing lost from them
    down_status = next(s for s in result.statuses if s.source == bed.down[0]["id"])
    assert down_status.attempts == 2  # retried once (a failure before the deadline)


def test_fail_fast_answers_an_error_instead(spanner_bed):  # noqa: F811
    bed = spanner_bed
    config = _config(bed, failure_strategy="fail_fast",
                     sources=[{"source": s["id"]} for s in [*bed.sources[:3], bed.down[0]]])
    with pytest.raises(SpanFailed) as failed:
        _run(config, parse_qido("study", []))
    assert bed.down[0]["id"] in str(failed.value)


def test_without_deduplication_a_study_is_a_row_per_source(spanner_bed):  # noqa: F811
    bed = spanner_bed
    result, _ = _run(_config(bed, deduplicate=False), parse_qido("study", []))
    assert len(result.rows) == sum(len(held) for held in bed.truth.values())


def test_an_identical_query_is_answered_from_the_cache_and_pages_the_merged_answer(spanner_bed):  # noqa: F811
    bed = spanner_bed
    config = _config(bed, cache_ttl_s=60)
    first, engine = _run(config, parse_qido("study", [("limit", "5")]))
    bed.set_delay(3.0)  # a second fan-out would now take 3 s on the slow source
    second, _ = _run(config, parse_qido("study", [("limit", "5"), ("offset", "5")]), engine)
    assert not first.cached and second.cached
    assert len(first.rows) == 5 and first.total == len(bed.studies) == second.total
    assert {_value(r, STUDY_UID) for r in first.rows}.isdisjoint({_value(r, STUDY_UID) for r in second.rows})


def test_series_of_a_study_merged_across_sources(spanner_bed):  # noqa: F811
    bed = spanner_bed
    partial = next(uid for uid, study in bed.studies.items()
                   if len({bed.truth[s][uid] for s in bed.truth if uid in bed.truth[s]}) > 1)
    result, _ = _run(_config(bed), parse_qido("series", [], study_uid=partial))
    assert len(result.rows) == len(bed.studies[partial]["series"])  # the union of the series, each once


def test_a_source_whose_credentials_cannot_be_read_fails_alone(spanner_bed):  # noqa: F811
    bed = spanner_bed
    locked = {**bed.sources[0], "id": "locked",
              "auth": {"type": "basic", "username": "u", "password": "env:AXIOM_TEST_NO_SUCH_SECRET"}}
    config = parse_config({"sources": [*bed.sources, locked], "spanners": [{"id": "all", "sources": [
        {"source": "locked"}, *({"source": s["id"]} for s in bed.sources[1:3])]}]})
    result, _ = _run(config, parse_qido("study", []))
    states = {s.source: (s.state, s.error) for s in result.statuses}
    assert states["locked"][0] == "failed" and "AXIOM_TEST_NO_SUCH_SECRET" in states["locked"][1]
    assert {states[s["id"]][0] for s in bed.sources[1:3]} == {"ok"} and result.rows


def test_the_source_slowest_of_late_is_asked_first(spanner_bed):  # noqa: F811
    """One source at a time (max_concurrency 1): a first query asks them in the config's
    order, the slow source (listed last) once the others answered; the next asks it
    first, so the query's longest wait starts at once. The merge order stays the config's."""
    bed = spanner_bed
    bed.set_delay(0.05)
    config = _config(bed, max_concurrency=1, cache_ttl_s=0)

    def slow_source_waited() -> tuple[float, list]:
        started = time.monotonic()
        bed.proxy.opened.clear()
        result, _ = _run(config, parse_qido("study", []), engine)
        opened = next(at for name, at in bed.proxy.opened if name == "dicom")
        return opened - started, result

    engine = Spanning(LocalSecrets())
    first_wait, first = slow_source_waited()
    second_wait, second = slow_source_waited()
    assert first_wait > 0.05  # after seven other sources, one at a time
    assert second_wait < first_wait / 2  # relative: under load every step is slower
    assert [s.source for s in second.statuses] == [s["id"] for s in bed.sources]  # reported in config order
    assert second.rows == first.rows  # the same merge: priorities, not start order, decide
