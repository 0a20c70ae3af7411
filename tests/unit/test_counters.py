"""The status counters in the embedded runtime's document store: increments from
several processes and threads at once lose none (each stage worker process counts
into the same state.db)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
from shared.counters import COUNTERS

PER_WORKER = 50


def _count_from_threads(path: str) -> None:
    docs = SQLiteDocumentStore(SQLiteDatabase(Path(path)))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: docs.increment(COUNTERS, "destination:pacs", {"delivered": 1, "held": -1}),
                      range(PER_WORKER)))


def test_increments_from_processes_and_threads_are_none_lost(tmp_path):
    path = str(tmp_path / "state.db")
    docs = SQLiteDocumentStore(SQLiteDatabase(Path(path)))
    docs.increment(COUNTERS, "destination:pacs", {"failed": 2}, {"last_error": "association rejected"})
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_count_from_threads, args=(path,)) for _ in range(3)]
    for w in workers:
        w.start()
    _count_from_threads(path)
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert docs.get(COUNTERS, "destination:pacs") == {"failed": 2, "last_error": "association rejected",
                                                      "delivered": 4 * PER_WORKER, "held": -4 * PER_WORKER}


def test_several_counters_in_one_transaction_from_threads(tmp_path):
    docs = SQLiteDocumentStore(SQLiteDatabase(tmp_path / "state.db"))

    def one_query(_):
        docs.increment_many(COUNTERS, {"spanner:all": ({"queries": 1}, None),
                                       "spanner_source:a": ({"queries": 1, "ms": 7}, None),
                                       "spanner_source:b": ({"queries": 1, "errors": 1}, {"last_error": "timeout"})})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one_query, range(20)))
    assert docs.get(COUNTERS, "spanner:all") == {"queries": 20}
    assert docs.get(COUNTERS, "spanner_source:a") == {"queries": 20, "ms": 140}
    assert docs.get(COUNTERS, "spanner_source:b") == {"queries": 20, "errors": 20, "last_error": "timeout"}
