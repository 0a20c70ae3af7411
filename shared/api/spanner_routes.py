"""The spanner's QIDO-RS endpoints (PS3.18 10.6) and the data browser, under
``/api/v1``: one query answered from every source of a spanner (``spanner_config_id``)
or from one configured source (``/data-browser/query``), as ``application/dicom+json``.

A partial answer carries a ``Warning`` header (PS3.18 8.3.5.1) naming the sources that
did not answer, and every answer the per-source status in ``X-Spanner-Status`` (JSON:
source, state, rows, ms, attempts, error). ``fail_fast`` answers 502 with the statuses.
A bad query is a 400 naming every bad parameter. Any role that reads may query.
``async=true`` answers 202 at once with the id of a query record; its tasks (one per
source: :mod:`shared.spanner.job`) run as a Cloud Run job on GCP, in threads of the
serving process in the embedded runtime; ``GET /spanner/queries/{id}`` follows it."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from shared.api.app import PREFIX, get_ports
from shared.api.auth import require
from shared.api.permissions import Permission, Principal
from shared.ports import Ports

router = APIRouter(tags=["spanner"])

DICOM_JSON = "application/dicom+json"
OWN_PARAMS = {"spanner_config_id", "source_id", "level", "async"}


def _spanner(config, spanner_id: str | None):
    if not spanner_id:
        if len(config.spanners) == 1:
            return config.spanners[0]
        raise HTTPException(400, "spanner_config_id is required (the id of a configured spanner)")
    for spanner in config.spanners:
        if spanner.id == spanner_id:
            return spanner
    raise HTTPException(404, f"no spanner {spanner_id!r}")


def jobs(request: Request, ports: Ports):
    """Where async queries run: the runtime's runner (GCP: a Cloud Run job), else
    threads of this process (the embedded runtime)."""
    from shared.spanner.job import LocalJobs

    runner = getattr(request.app.state, "spanner_jobs", None)
    return runner if runner is not None else LocalJobs(ports)


def _answer(result) -> Response:
    from shared.spanner.engine import statuses_block

    headers = {"X-Spanner-Status": json.dumps(statuses_block(result), separators=(",", ":"))}
    warning = result.warning()
    if warning:
        headers["Warning"] = warning
    return Response(json.dumps(result.rows), media_type=DICOM_JSON, headers=headers)


async def _query(request: Request, ports: Ports, spanner, level: str, study_uid: str | None = None,
                 series_uid: str | None = None) -> Response:
    from shared.spanner.engine import SpanFailed, spanning
    from shared.spanner.query import QueryError, parse_qido

    params = [(k, v) for k, v in request.query_params.multi_items() if k not in OWN_PARAMS]
    try:
        query = parse_qido(level, params, study_uid=study_uid, series_uid=series_uid)
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    if request.query_params.get("async", "false").lower() == "true":
        from shared.spanner.job import create_query

        record = create_query(ports, spanner, level, params, study_uid, series_uid)
        jobs(request, ports).start(record["id"], record["tasks"])
        location = f"{PREFIX}/spanner/queries/{record['id']}"
        return Response(json.dumps({"id": record["id"], "state": record["state"], "status": location}),
                        status_code=202, media_type="application/json", headers={"Location": location})
    config = ports.config()
    try:
        result = await spanning(ports.secrets, ports.docs).query(spanner, {s.id: s for s in config.sources}, query)
    except SpanFailed as exc:
        raise HTTPException(502, {"reason": str(exc), "sources": [s.to_dict() for s in exc.statuses]}) from None
    return _answer(result)


def _spanned(level: str, path: str, summary: str):
    @router.get(f"/spanner/qido/{path}", summary=summary, response_class=Response,
                responses={200: {"content": {DICOM_JSON: {}}}, 400: {}, 404: {}, 502: {}},
                name=f"spanner_{path.replace('/', '_').replace('{', '').replace('}', '')}")
    async def search(request: Request, spanner_config_id: str | None = None, study: str | None = None,
                     series: str | None = None, ports: Ports = Depends(get_ports),
                     _: Principal = Depends(require(Permission.SPANNER_QUERY))) -> Response:
        spanner = _spanner(ports.config(), spanner_config_id)
        return await _query(request, ports, spanner, level, study, series)

    return search


_spanned("study", "studies", "Search for studies on every source of a spanner")
_spanned("series", "series", "Search for series on every source of a spanner")
_spanned("series", "studies/{study}/series", "Search for a study's series on every source of a spanner")
_spanned("instance", "instances", "Search for instances on every source of a spanner")
_spanned("instance", "studies/{study}/instances", "Search for a study's instances on every source of a spanner")
_spanned("instance", "studies/{study}/series/{series}/instances",
         "Search for a series' instances on every source of a spanner")


@router.get("/data-browser/query", summary="Search one configured source (QIDO-RS keys; level: study, series, "
                                           "instance)", response_class=Response,
            responses={200: {"content": {DICOM_JSON: {}}}, 400: {}, 404: {}, 502: {}})
async def data_browser(request: Request, source_id: str, level: str = "study", ports: Ports = Depends(get_ports),
                       _: Principal = Depends(require(Permission.SPANNER_QUERY))) -> Response:
    from shared.config import Spanner, SpannerSource

    if level not in ("study", "series", "instance"):
        raise HTTPException(400, f"level {level!r} is not one of study, series, instance")
    config = ports.config()
    if not any(s.id == source_id for s in config.sources):
        raise HTTPException(404, f"no source {source_id!r}")
    one = Spanner(id=f"data-browser:{source_id}", sources=[SpannerSource(source=source_id)],
                  failure_strategy="fail_fast", cache_ttl_s=0)
    return await _query(request, ports, one, level)


@router.get("/spanner/queries/{query_id}", summary="An async spanner query: its state, each source's status, and "
                                                  "once every source answered or failed, the merged results")
def query_status(query_id: str, ports: Ports = Depends(get_ports),
                 _: Principal = Depends(require(Permission.SPANNER_QUERY))) -> dict:
    from shared.spanner.job import query_status as status_of

    found = status_of(ports, query_id)
    if found is None:
        raise HTTPException(404, f"no spanner query {query_id}")
    return found
