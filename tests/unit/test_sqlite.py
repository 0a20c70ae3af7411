"""SQLiteDatabase: a writer waits for another connection's write lock (each process of
the embedded runtime has its own connections), and gives up with SQLite's own error
after BUSY_WAIT_S."""

import sqlite3
import threading

import pytest

from shared.adapters import sqlite as sqlite_adapter
from shared.adapters.sqlite import SQLiteDatabase


def hold_write_lock(path, seconds: float) -> threading.Thread:
    """Another connection takes the write lock and keeps it for ``seconds``."""
    taken = threading.Event()

    def hold():
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES ('other')")
        taken.set()
        threading.Event().wait(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5)
    return thread


def test_a_writer_waits_for_the_lock_and_then_writes(tmp_path):
    db = SQLiteDatabase(tmp_path / "x.db")
    db.conn().execute("CREATE TABLE t (v TEXT)")
    holder = hold_write_lock(db.path, 0.3)
    db.conn().execute("INSERT INTO t VALUES ('mine')")  # without waiting: "database is locked"
    holder.join()
    assert sorted(v for (v,) in db.conn().execute("SELECT v FROM t")) == ["mine", "other"]
    with db.transaction() as conn:  # BEGIN IMMEDIATE waits the same way
        conn.execute("INSERT INTO t VALUES ('in a transaction')")
    assert db.conn().execute("SELECT count(*) FROM t").fetchone()[0] == 3


def test_a_writer_gives_up_after_the_wait_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_adapter, "BUSY_WAIT_S", 0.05)
    db = SQLiteDatabase(tmp_path / "x.db")
    db.conn().execute("CREATE TABLE t (v TEXT)")
    holder = hold_write_lock(db.path, 1.0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            db.conn().execute("INSERT INTO t VALUES ('mine')")
    finally:
        holder.join()
    assert [v for (v,) in db.conn().execute("SELECT v FROM t")] == ["other"]


def _create_after(barrier, path: str, n: int, results) -> None:
    from shared.adapters.sqlite import SQLiteDocumentStore

    docs = SQLiteDocumentStore(SQLiteDatabase(path))
    barrier.wait()
    results.put((n, docs.create("claims", "one", {"n": n})))


def test_create_if_absent_has_one_winner_across_processes(tmp_path):
    """The embedded runtime's processes each have their own connections: creates of one
    document released at the same moment (a barrier) still have exactly one winner,
    and the document is the winner's."""
    import multiprocessing

    from shared.adapters.sqlite import SQLiteDocumentStore

    path = tmp_path / "docs.db"
    docs = SQLiteDocumentStore(SQLiteDatabase(path))  # creates the table
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_create_after, args=(barrier, str(path), n, results)) for n in range(4)]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    winners = [n for n, created in outcomes.items() if created]
    assert len(winners) == 1, outcomes
    assert docs.get("claims", "one") == {"n": winners[0]}
    assert docs.create("claims", "one", {"n": 99}) is False
