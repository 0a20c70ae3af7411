"""The spanner's endpoints under /api/v1 over the eight Orthanc servers of
tests/support/spanner_bed.py: the merged QIDO-RS answer as application/dicom+json with
the per-source status, the partial-result Warning, fail_fast's 502, 400s that name the
bad parameter, an async query followed to its merged results, the data browser on one
source, and the roles: a viewer queries, only config writers change spanners."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from shared.api.app import PREFIX, create_api
from shared.api.auth import authenticate
from shared.api.permissions import Principal, Role
from shared.config import parse_config
from shared.config.store import replace_config
from shared.runtime.configcache import CachedConfig
from shared.spanner.merge import sources_of
from tests.support.procs import wait_for
from tests.support.spanner_bed import spanner_bed  # noqa: F401 (fixture)
from tests.support.stageports import build_ports

STUDY_UID = "0020000D"


@pytest.fixture
def api(tmp_path, spanner_bed):  # noqa: F811
    bed = spanner_bed
    bed.set_delay(0)
    members = [{"source": s["id"], "priority": n} for n, s in enumerate(bed.sources)]
    config = parse_config({
        "sources": [*bed.sources, *bed.down],
        "spanners": [{"id": "all", "sources": members, "timeout_s": 5, "cache_ttl_s": 0},
                     {"id": "with-down", "sources": [*members[:2], {"source": bed.down[0]["id"]}],
                      "retry_attempts": 0, "cache_ttl_s": 0},
                     {"id": "strict", "sources": [*members[:2], {"source": bed.down[0]["id"]}],
                      "failure_strategy": "fail_fast", "cache_ttl_s": 0},
                     {"id": "cached", "sources": members[:3], "cache_ttl_s": 60}]})
    ports = build_ports(tmp_path, {})
    replace_config(ports.docs, config)
    ports.config = CachedConfig(ports.docs, watch_revision=True)
    app = create_api(ports)
    role = {"role": Role.VIEWER}
    app.dependency_overrides[authenticate] = lambda: Principal(user_id="u1", email="v@example.org",
                                                               role=role["role"], via="api_key")
    yield TestClient(app), role, bed
    bed.set_delay(0)


def test_a_viewer_gets_the_merged_studies_with_each_sources_status(api):
    client, _, bed = api
    answer = client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "all"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    rows = answer.json()
    assert len({r[STUDY_UID]["Value"][0] for r in rows}) == len(rows) == len(bed.studies)
    statuses = json.loads(answer.headers["X-Spanner-Status"])
    assert [s["source"] for s in statuses] == [s["id"] for s in bed.sources]
    assert {s["state"] for s in statuses} == {"ok"} and "Warning" not in answer.headers
    shared = next(r for r in rows if len(sources_of(r)) > 1)
    assert set(sources_of(shared)) == {sid for sid in bed.truth if shared[STUDY_UID]["Value"][0] in bed.truth[sid]}


def test_a_down_source_is_named_in_the_warning_and_fail_fast_is_an_error(api):
    client, _, bed = api
    partial = client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "with-down"})
    assert partial.status_code == 200
    assert partial.headers["Warning"].startswith("299 ") and bed.down[0]["id"] in partial.headers["Warning"]
    failed = client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "strict"})
    assert failed.status_code == 502 and bed.down[0]["id"] in failed.text


@pytest.mark.parametrize("params, says", [
    ({"Modality": "CT"}, "Modality"),  # a series-level key in a study query
    ({"StudyDate": "2020-01-01-2020"}, "StudyDate"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1000000"}, "limit"),
    ({"NoSuchKey": "1"}, "NoSuchKey"),
])
def test_bad_queries_are_400_naming_the_parameter(api, params, says):
    client, _, _ = api
    answer = client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "all", **params})
    assert answer.status_code == 400 and says in answer.text, answer.text


def test_an_unknown_spanner_is_404(api):
    client, _, _ = api
    assert client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "nope"}).status_code == 404


def test_an_async_query_is_followed_to_its_merged_results(api):
    client, _, bed = api
    started = client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "all", "async": "true"})
    assert started.status_code == 202, started.text
    status_url = started.headers["Location"]

    def finished():
        status = client.get(status_url).json()
        return status if status["state"] == "finished" else None

    status = wait_for(finished, 30, what="the async query's tasks")
    assert status["done"] == status["tasks"] == len(bed.sources) and not status["partial"]
    assert {r[STUDY_UID]["Value"][0] for r in status["results"]} == set(bed.studies)
    assert client.get(f"{PREFIX}/spanner/queries/nope").status_code == 404


def test_the_data_browser_queries_one_source(api):
    client, _, bed = api
    source = bed.sources[4]  # a C-FIND source
    answer = client.get(f"{PREFIX}/data-browser/query", params={"source_id": source["id"]})
    assert answer.status_code == 200, answer.text
    assert {r[STUDY_UID]["Value"][0] for r in answer.json()} == set(bed.truth[source["id"]])
    assert client.get(f"{PREFIX}/data-browser/query", params={"source_id": "nope"}).status_code == 404


def test_only_a_config_writer_changes_a_spanner(api):
    client, role, bed = api
    body = {"id": "new", "sources": [{"source": bed.sources[0]["id"]}]}
    assert client.post(f"{PREFIX}/config/spanners", json=body).status_code == 403  # a viewer
    role["role"] = Role.ADMIN
    made = client.post(f"{PREFIX}/config/spanners", json=body)
    assert made.status_code == 201, made.text
    bad = client.post(f"{PREFIX}/config/spanners", json={"id": "bad", "sources": [{"source": "nope"}]})
    assert bad.status_code == 422 and "nope" in bad.text


def test_the_status_counts_queries_source_errors_and_cache_hits(api):
    client, _, bed = api
    for _ in range(3):
        assert client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "cached"}).status_code == 200
    client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "with-down"})
    status = client.get(f"{PREFIX}/status").json()
    cached = status["spanners"]["cached"]
    assert (cached["queries"], cached["cache_hits"], cached["cache_hit_rate"]) == (3, 2, round(2 / 3, 4))
    assert status["spanners"]["with-down"]["partial"] == 1
    down = status["spanner_sources"][bed.down[0]["id"]]
    assert down["errors"] == 1 and down["last_error"].startswith("failed")
    first = status["spanner_sources"][bed.sources[0]["id"]]
    assert first["queries"] >= 2 and first["errors"] == 0 and first["ms_mean"] is not None
