"""Async spanner queries: a query record, one task per source, and the merged answer
once every task has written its part.

The contract is a Cloud Run job's: a task knows the query (``AXIOM_SPANNER_QUERY_ID``),
its index (``CLOUD_RUN_TASK_INDEX``) and the number of tasks (``CLOUD_RUN_TASK_COUNT``),
and asks the spanner's sources ``index``, ``index + count``, ... (one source per task
when there are as many tasks as sources), writing each source's answer and status as a
part (collection ``spanner_query_parts``). ``GET /api/v1/spanner/queries/{id}`` reads
the record and its parts (:func:`query_status`): running while parts are missing, then
the merged rows. In GCP the API starts a Cloud Run job execution
(:class:`CloudRunJobs`); the embedded runtime runs the same tasks in threads of the
serving process (:class:`LocalJobs`).

    python -m shared.cli spanner run-task    # one Cloud Run task (shared/cli_spanner.py)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from shared.spanner.engine import SourceStatus, run_sync, spanning
from shared.spanner.merge import SourceAnswer, apply_paging, merge
from shared.spanner.query import parse_qido

if TYPE_CHECKING:  # pragma: no cover
    from shared.config import Spanner
    from shared.ports import Ports
    from shared.spanner.query import QidoQuery

log = logging.getLogger(__name__)

QUERIES = "spanner_queries"
PARTS = "spanner_query_parts"


class JobRunner(Protocol):
    def start(self, query_id: str, task_count: int) -> None:
        ...


def create_query(ports: "Ports", spanner: "Spanner", level: str, params: list[tuple[str, str]],
                 study_uid: str | None, series_uid: str | None) -> dict:
    """The query's record (state ``running``), before any task starts."""
    record = {"id": uuid.uuid4().hex, "spanner": spanner.id, "level": level, "params": [list(p) for p in params],
              "study_uid": study_uid, "series_uid": series_uid, "state": "running",
              "tasks": len(spanner.sources), "created_at": datetime.now(timezone.utc).isoformat()}
    ports.docs.set(QUERIES, record["id"], record)
    return record


def _query_of(record: dict) -> "QidoQuery":
    return parse_qido(record["level"], [tuple(p) for p in record["params"]], study_uid=record.get("study_uid"),
                      series_uid=record.get("series_uid"))


def _spanner_of(ports: "Ports", record: dict) -> "Spanner":
    for spanner in ports.config().spanners:
        if spanner.id == record["spanner"]:
            return spanner
    raise LookupError(f"spanner {record['spanner']!r} is no longer configured")


def run_task(ports: "Ports", query_id: str, index: int, count: int) -> int:
    """Ask this task's sources and write their parts; returns how many it asked."""
    record = ports.docs.get(QUERIES, query_id)
    if record is None:
        raise LookupError(f"no spanner query {query_id}")
    spanner, query = _spanner_of(ports, record), _query_of(record)
    sources = {s.id: s for s in ports.config().sources}
    mine = list(enumerate(spanner.sources))[index::count]

    async def ask_all():
        engine = spanning(ports.secrets, ports.docs)
        return await asyncio.gather(*(engine.ask_one(spanner, member, order, sources, query) for order, member in mine))

    for (order, _), (answer, status) in zip(mine, run_sync(ask_all())):
        ports.docs.set(PARTS, f"{query_id}-{order:03d}", {"query": query_id, "order": order,
                                                         "answer": asdict(answer) if answer else None,
                                                         "status": status.to_dict()})
    return len(mine)


def query_status(ports: "Ports", query_id: str) -> dict | None:
    """The record with the per-source statuses so far and, once every source has
    answered or failed, the merged rows (``state`` ``finished``)."""
    record = ports.docs.get(QUERIES, query_id)
    if record is None:
        return None
    parts = [doc for _, doc in ports.docs.query(PARTS, at_least=f"{query_id}-", below=f"{query_id}.", limit=1000)]
    statuses = [SourceStatus(**p["status"]) for p in sorted(parts, key=lambda p: p["order"])]
    out = {**record, "sources": [s.to_dict() for s in statuses]}
    if len(parts) < record["tasks"]:
        return {**out, "state": "running", "done": len(parts)}
    answers = [SourceAnswer(**p["answer"]) for p in parts if p["answer"]]
    query = _query_of(record)
    spanner = _spanner_of(ports, record)
    merged = merge(query.level, answers, deduplicate=spanner.deduplicate)
    missing = [s.source for s in statuses if s.state != "ok"]
    return {**out, "state": "finished", "done": len(parts), "partial": bool(missing), "missing": missing,
            "total": len(merged), "results": apply_paging(merged, query.limit, query.offset)}


class LocalJobs:
    """The embedded runtime's job runs: each task in a thread of this process."""

    def __init__(self, ports: "Ports"):
        self.ports = ports

    def start(self, query_id: str, task_count: int) -> None:
        for index in range(task_count):
            threading.Thread(target=self._task, args=(query_id, index, task_count), daemon=True,
                             name=f"spanner-{query_id[:8]}-{index}").start()

    def _task(self, query_id: str, index: int, count: int) -> None:
        try:
            run_task(self.ports, query_id, index, count)
        except Exception:  # noqa: BLE001 - the query stays running with this part missing; logged
            log.exception("spanner query %s: task %d failed", query_id, index)


class CloudRunJobs:
    """A Cloud Run job execution per query (google-cloud-run's ``JobsClient.run_job``):
    ``task_count`` tasks, the query id in the container's environment."""

    def __init__(self, job_name: str, client=None):
        self.job_name = job_name  # projects/P/locations/L/jobs/J
        self._client = client

    def start(self, query_id: str, task_count: int) -> None:
        from google.cloud import run_v2

        client = self._client or run_v2.JobsClient()
        overrides = run_v2.RunJobRequest.Overrides(
            task_count=task_count,
            container_overrides=[run_v2.RunJobRequest.Overrides.ContainerOverride(
                env=[run_v2.EnvVar(name="AXIOM_SPANNER_QUERY_ID", value=query_id)])])
        client.run_job(request=run_v2.RunJobRequest(name=self.job_name, overrides=overrides))
