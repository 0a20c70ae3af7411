"""DocumentStore.query and count on SQLite: equality filters, order, range, cursor
pages (each document once, also while others are inserted), counts; the plans SQLite
makes for the exception and audit lists read an index range, never the whole table;
the Firestore index file matches shared/indexes.py."""

from __future__ import annotations

import json
import random
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared import exceptions
from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
from shared.exceptions import EXCEPTIONS, ExceptionFilter
from shared.indexes import firestore_indexes
from shared.ports import ID

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


@pytest.fixture
def docs(tmp_path):
    return SQLiteDocumentStore(SQLiteDatabase(tmp_path / "state.db"))


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def fill(docs, n: int = 60) -> dict[str, dict]:
    made = {}
    for i in range(n):
        doc = {"status": ("failed", "held", "quarantined")[i % 3], "stage": ("route", "match")[i % 2],
               "destination_id": f"d{i % 4}", "archived": i % 5 == 0, "created_at": at(i // 2)}  # pairs share a time
        made[f"r{i:03d}"] = doc
        docs.set(EXCEPTIONS, f"r{i:03d}", doc)
    return made


def expected(made, where=None, lo=None, hi=None, reverse=False) -> list[str]:
    ids = [i for i, d in made.items() if all(d.get(k) == v for k, v in (where or {}).items())
           and (lo is None or d["created_at"] >= lo) and (hi is None or d["created_at"] < hi)]
    return sorted(ids, key=lambda i: (made[i]["created_at"], i), reverse=reverse)


def pages(docs, size: int, **query) -> list[str]:
    seen, after = [], None
    while True:
        got = docs.query(EXCEPTIONS, order_by="created_at", after=after, limit=size, **query)
        seen += [i for i, _ in got]
        if len(got) < size:
            return seen
        after = (got[-1][1]["created_at"], got[-1][0])


@pytest.mark.parametrize("where", [None, {"status": "failed"}, {"status": "held", "destination_id": "d1"},
                                   {"archived": False}, {"archived": True, "stage": "route"}])
def test_filters_order_range_and_cursor_pages(docs, where):
    made = fill(docs)
    assert [i for i, _ in docs.query(EXCEPTIONS, where=where, order_by="created_at")] == expected(made, where)
    assert [i for i, _ in docs.query(EXCEPTIONS, where=where, order_by="created_at", descending=True)] == \
        expected(made, where, reverse=True)
    lo, hi = at(5), at(20)
    assert [i for i, _ in docs.query(EXCEPTIONS, where=where, order_by="created_at", at_least=lo, below=hi)] == \
        expected(made, where, lo, hi)
    for size in (1, 4, 7):  # pages cut between two records of one time too
        assert pages(docs, size, where=where) == expected(made, where)
    assert docs.count(EXCEPTIONS, where) == len(expected(made, where))


def test_order_by_id_descending_with_an_id_range(docs):
    for i in range(20):
        docs.set("audit", f"2026{i:04d}-x", {"action": "keys.create" if i % 2 else "config.replace"})
    got = docs.query("audit", where={"action": "keys.create"}, order_by=ID, descending=True,
                     at_least="20260004", below="20260015", limit=3)
    assert [i for i, _ in got] == ["20260013-x", "20260011-x", "20260009-x"]
    after = docs.query("audit", where={"action": "keys.create"}, order_by=ID, descending=True,
                       at_least="20260004", after=(got[-1][0], got[-1][0]))
    assert [i for i, _ in after] == ["20260007-x", "20260005-x"]


def test_a_document_without_the_order_field_is_not_listed_and_names_are_checked(docs):
    docs.set(EXCEPTIONS, "a", {"status": "failed", "created_at": at(1)})
    docs.set(EXCEPTIONS, "b", {"status": "failed"})
    assert [i for i, _ in docs.query(EXCEPTIONS, where={"status": "failed"}, order_by="created_at")] == ["a"]
    assert docs.count(EXCEPTIONS, {"status": "failed"}) == 2 and docs.count(EXCEPTIONS) == 2
    with pytest.raises(ValueError):
        docs.query(EXCEPTIONS, where={"status') OR 1=1 --": "x"})
    with pytest.raises(ValueError):
        docs.count(EXCEPTIONS, {"status": None})


def test_cursor_pages_give_each_document_once_while_others_are_inserted(tmp_path):
    db = SQLiteDatabase(tmp_path / "state.db")
    docs = SQLiteDocumentStore(db)
    made = fill(docs, 300)
    stop, inserted = threading.Event(), []

    def insert():  # another writer: new records at random times, before and after the reader's position
        writer = SQLiteDocumentStore(db)
        rng = random.Random(7)
        while not stop.is_set() and len(inserted) < 2000:
            doc_id = f"n{len(inserted):05d}"
            writer.set(EXCEPTIONS, doc_id, {"status": "failed", "created_at": at(rng.uniform(0, 200))})
            inserted.append(doc_id)

    thread = threading.Thread(target=insert)
    thread.start()
    try:
        seen = pages(docs, 13)
    finally:
        stop.set()
        thread.join()
    assert len(seen) == len(set(seen)), "a document was listed twice"
    assert set(made) <= set(seen), "a document present from the start was missed"
    assert set(seen) - set(made) <= set(inserted)


@contextmanager
def statements(docs):
    """The SQL run through the store meanwhile (any thread's connection), with their values."""
    run: list[str] = []
    original, traced = docs.db.conn, []

    def conn():
        got = original()
        if got not in traced:
            got.set_trace_callback(run.append)
            traced.append(got)
        return got

    docs.db.conn = conn
    try:
        yield run
    finally:
        docs.db.conn = original
        for got in traced:
            got.set_trace_callback(None)


def plans(docs, sql_run: list[str]) -> dict[str, list[str]]:
    conn = docs.db.conn()
    return {sql: [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            for sql in sql_run if sql.lstrip().upper().startswith("SELECT")}


def assert_index_ranges(docs, sql_run: list[str]) -> None:
    found = plans(docs, sql_run)
    assert found, "no query ran"
    for sql, plan in found.items():
        assert not any(step.startswith("SCAN") for step in plan), (sql, plan)  # a full table or index scan
        assert not any("TEMP B-TREE" in step for step in plan), (sql, plan)  # sorted afterwards: read all
        assert all("INDEX" in step for step in plan if step.startswith("SEARCH")), (sql, plan)


class _Ports:
    def __init__(self, docs):
        self.docs = docs


@pytest.mark.parametrize("where", [ExceptionFilter(), ExceptionFilter(status="failed"),
                                   ExceptionFilter(stage="route", archived=None),
                                   ExceptionFilter(destination_id="d2", since=T0 + timedelta(minutes=3),
                                                   until=T0 + timedelta(minutes=40)),
                                   ExceptionFilter(archived=None, since=T0),
                                   ExceptionFilter(status="held", reason="nothing")])
def test_the_exception_list_reads_an_index_range(docs, where):
    fill(docs, 200)
    ports = _Ports(docs)
    with statements(docs) as run:
        page, cursor = exceptions.find_exceptions(ports, where, limit=5)
        # a reason filter that matches nothing gives no cursor: start from a position then
        exceptions.find_exceptions(ports, where, limit=5,
                                   after=cursor or exceptions.encode_cursor({"created_at": at(3), "id": "r006"}))
        docs.count(EXCEPTIONS, where.indexed())
    assert_index_ranges(docs, run)
    [from_cursor] = [plan for sql, plan in plans(docs, run).items() if " OR id >" in sql]
    assert "<expr>>?" in from_cursor[0], from_cursor  # the page starts at the cursor: a seek, not a skip


def test_the_audit_list_reads_an_index_range(docs):
    from fastapi.testclient import TestClient

    from shared.api.app import PREFIX, create_api
    from shared.api.auth import authenticate
    from shared.api.permissions import Principal, Role

    for i in range(50):
        docs.set("audit", f"20260501T0000{i:02d}000000Z-abcd", {
            "at": (T0 + timedelta(seconds=i)).isoformat(), "action": "keys.create" if i % 2 else "config.replace",
            "target": "users/u1", "user_id": "u1", "email": "a@example.org", "role": "admin", "via": "api_key"})
    api = create_api(_Ports(docs))
    api.dependency_overrides[authenticate] = lambda: Principal(user_id="a", email="a@example.org", role=Role.ADMIN,
                                                               via="api_key")
    client = TestClient(api)
    with statements(docs) as run:
        first = client.get(f"{PREFIX}/audit", params={"action": "keys.create", "limit": 4,
                                                      "since": "2026-05-01T00:00:10"}).json()
        client.get(f"{PREFIX}/audit", params={"action": "keys.create", "limit": 4, "cursor": first["next_cursor"]})
        client.get(f"{PREFIX}/audit", params={"limit": 4, "until": "2026-05-01T00:00:30"})
    assert [e["id"][:15] for e in first["items"]] == [f"20260501T0000{i}" for i in (49, 47, 45, 43)]
    assert_index_ranges(docs, run)


def test_the_firestore_index_file_is_the_one_the_code_lists():
    path = Path(__file__).parents[2] / "terraform" / "firestore_indexes.json"
    assert json.loads(path.read_text()) == firestore_indexes()


def test_a_bulk_selection_reads_pages_and_leaves_out_records_made_after_it(docs, monkeypatch):
    ports = _Ports(docs)
    before = [exceptions.record_exception(ports, stage="route", status="failed", reason="x") for _ in range(7)]
    monkeypatch.setattr(exceptions, "READ_BATCH", 3)  # several pages
    ids, total = exceptions.select_exceptions(ports, ExceptionFilter(status="failed"))
    first = next(ids)
    # a retry that fails again makes a new record while the job runs: not selected
    exceptions.record_exception(ports, stage="route", status="failed", reason="again")
    assert total == 7 and [first, *ids] == before
