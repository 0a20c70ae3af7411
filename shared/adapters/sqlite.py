"""SQLite adapters: the DocumentStore and DeliveryLedger of the embedded runtime.

One connection per thread; WAL so readers never wait for the writer."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from shared.indexes import INDEXES, ORDERS
from shared.ports import ID, Claim

BUSY_WAIT_S = 30.0  # how long a statement waits for another writer before it fails


class _Connection(sqlite3.Connection):
    """Waits for the write lock in short steps. SQLite's own busy handler sleeps 1, 2,
    5, 10 ... ms between tries, so a writer that met another process's write of a few
    tens of microseconds waited a millisecond or more: on the C-STORE path, as long as a
    fsync. (``executemany`` is not retried: use it inside a transaction, which holds the
    lock.)"""

    def execute(self, sql, parameters=(), /):
        return _when_unlocked(super().execute, sql, parameters)

    def executescript(self, script, /):
        return _when_unlocked(super().executescript, script)


def _when_unlocked(call, *args):
    delay, deadline = 0.00005, time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            return call(*args)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.002)


def _jsonable(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """``doc`` as it reads back once stored (through JSON, like every write here)."""
    return None if doc is None else json.loads(json.dumps(doc, default=str))


class SQLiteDatabase:
    def __init__(self, path: Path, *, synchronous: str = "NORMAL"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # timeout=0: no SQLite busy handler, _Connection waits instead
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False,
                                   factory=_Connection)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._local.conn = conn
        return conn

    def transaction(self):
        return _Transaction(self.conn())


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _column(field: str) -> str:
    """The SQL expression of a top-level field: the same text in the indexes and the
    queries, so that SQLite matches the one to the other."""
    if field == ID:
        return "id"
    if not _FIELD_NAME.match(field):  # it is written into the SQL: names only
        raise ValueError(f"{field!r} is not a field name a query can use")
    return f"json_extract(data, '$.{field}')"


def _collection(name: str) -> str:
    """A collection name as an SQL literal: a partial index applies only to queries
    that name its collection in their text, not as a bound value."""
    if not _FIELD_NAME.match(name):
        raise ValueError(f"{name!r} is not a collection name a query can use")
    return f"'{name}'"


class SQLiteDocumentStore:
    """Documents as JSON rows keyed by (collection, id); the Firestore layout in a table.
    The fields :mod:`shared.indexes` names are indexed by expression indexes over
    ``json_extract`` (collection, field, sort field, id; partial, one collection each), so a query
    reads an index range."""

    def __init__(self, db: SQLiteDatabase):
        self.db = db
        conn = self.db.conn()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS documents (collection TEXT NOT NULL, id TEXT NOT NULL,"
            " data TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (collection, id))"
        )
        wanted = [(i.collection, (i.equals, i.order_by)) for i in INDEXES] + [(c, (o,)) for c, o in ORDERS]
        for collection, fields in wanted:
            # partial: only that collection's rows pay for the index on a write (the
            # counters, leases and config documents do not); led by the collection so
            # that the planner prefers it to the primary key for the same equality
            columns = ", ".join(_column(f) for f in fields if f != ID)
            name = "documents_" + "_".join((collection, *(f.strip("_") for f in fields)))
            conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON documents (collection, {columns}, id)"
                         f" WHERE collection={_collection(collection)}")

    def get(self, collection, doc_id):
        row = self.db.conn().execute(
            "SELECT data FROM documents WHERE collection=? AND id=?", (collection, doc_id)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def set(self, collection, doc_id, doc):
        self.db.conn().execute(
            "INSERT OR REPLACE INTO documents VALUES (?,?,?,?)",
            (collection, doc_id, json.dumps(doc, default=str), time.time()),
        )

    def create(self, collection, doc_id, doc) -> bool:
        # one statement under SQLite's write lock: of concurrent creates, in any
        # process, exactly one inserts
        cur = self.db.conn().execute(
            "INSERT INTO documents VALUES (?,?,?,?) ON CONFLICT (collection, id) DO NOTHING",
            (collection, doc_id, json.dumps(doc, default=str), time.time()),
        )
        return cur.rowcount == 1

    def delete(self, collection, doc_id):
        self.db.conn().execute("DELETE FROM documents WHERE collection=? AND id=?", (collection, doc_id))

    def compare_and_set(self, changes) -> bool:
        with self.db.transaction() as conn:  # BEGIN IMMEDIATE: no other writer until COMMIT
            for collection, doc_id, expected, _ in changes:
                row = conn.execute("SELECT data FROM documents WHERE collection=? AND id=?",
                                   (collection, doc_id)).fetchone()
                if (json.loads(row[0]) if row else None) != _jsonable(expected):
                    return False
            now = time.time()
            for collection, doc_id, _, new in changes:
                if new is None:
                    conn.execute("DELETE FROM documents WHERE collection=? AND id=?", (collection, doc_id))
                else:
                    conn.execute("INSERT OR REPLACE INTO documents VALUES (?,?,?,?)",
                                 (collection, doc_id, json.dumps(new, default=str), now))
            return True

    def list(self, collection):
        rows = self.db.conn().execute(
            "SELECT id, data FROM documents WHERE collection=? ORDER BY id", (collection,)
        ).fetchall()
        return {doc_id: json.loads(data) for doc_id, data in rows}

    def query(self, collection, *, where=None, order_by=ID, descending=False, at_least=None, below=None,
              after=None, limit=None):
        order = _column(order_by)
        sql, args = self._where(collection, where)
        if order_by != ID:
            sql += f" AND {order} IS NOT NULL"
        if at_least is not None:
            sql, args = sql + f" AND {order} >= ?", [*args, at_least]
        if below is not None:
            sql, args = sql + f" AND {order} < ?", [*args, below]
        if after is not None:
            beyond = "<" if descending else ">"
            if order_by == ID:
                sql, args = sql + f" AND id {beyond} ?", [*args, after[-1]]
            else:
                # the position (sort value, id), spelt so that the sort value bounds the
                # index range (SQLite does not seek on a row value over an expression)
                sql += f" AND {order} {beyond}= ? AND ({order} {beyond} ? OR id {beyond} ?)"
                args = [*args, after[0], after[0], after[1]]
        direction = "DESC" if descending else "ASC"
        sql += f" ORDER BY {order} {direction}" + (f", id {direction}" if order_by != ID else "")
        if limit is not None:
            sql, args = sql + " LIMIT ?", [*args, int(limit)]
        rows = self.db.conn().execute(f"SELECT id, data FROM documents WHERE {sql}", args).fetchall()
        return [(doc_id, json.loads(data)) for doc_id, data in rows]

    def count(self, collection, where=None):
        sql, args = self._where(collection, where)
        return self.db.conn().execute(f"SELECT count(*) FROM documents WHERE {sql}", args).fetchone()[0]

    @staticmethod
    def _where(collection, where) -> tuple[str, list]:
        sql, args = f"collection={_collection(collection)}", []
        for field, value in (where or {}).items():
            if value is None or isinstance(value, (dict, list)):
                raise ValueError(f"{field}: a query compares with a string, a number or a boolean")
            sql, args = sql + f" AND {_column(field)}=?", [*args, value]
        return sql, args

    def increment(self, collection, doc_id, counts, fields=None):
        self.increment_many(collection, {doc_id: (counts, fields)})

    def increment_many(self, collection, changes):
        with self.db.transaction() as conn:  # the write lock from the read on: no lost update
            for doc_id, (counts, fields) in changes.items():
                row = conn.execute("SELECT data FROM documents WHERE collection=? AND id=?",
                                   (collection, doc_id)).fetchone()
                doc = json.loads(row[0]) if row else {}
                for name, n in counts.items():
                    doc[name] = int(doc.get(name) or 0) + n
                doc.update(fields or {})
                conn.execute("INSERT OR REPLACE INTO documents VALUES (?,?,?,?)",
                             (collection, doc_id, json.dumps(doc, default=str), time.time()))

    def replace_collections(self, docs: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Swap whole collections in one transaction (loading a config file)."""
        with self.db.transaction() as conn:
            for collection, items in docs.items():
                conn.execute("DELETE FROM documents WHERE collection=?", (collection,))
                conn.executemany(
                    "INSERT INTO documents VALUES (?,?,?,?)",
                    [(collection, i, json.dumps(d, default=str), time.time()) for i, d in items.items()],
                )


class SQLiteDeliveryLedger:
    """Delivery claims: a row per idempotency key, state 'sending' (with a lease) or
    'delivered'. Taking over a claim whose lease ran out (its sender died) marks the
    delivery ``in_doubt``: the peer may already have it, and it is sent again."""

    def __init__(self, db: SQLiteDatabase):
        self.db = db
        self.db.conn().execute(
            "CREATE TABLE IF NOT EXISTS deliveries (key TEXT PRIMARY KEY, state TEXT NOT NULL,"
            " lease_until REAL NOT NULL, in_doubt INTEGER NOT NULL, info TEXT NOT NULL, updated_at REAL NOT NULL)"
        )
        # partial indexes: the claims being sent and those in doubt, a few among millions
        # delivered, counted by in_flight() without reading the others
        self.db.conn().execute("CREATE INDEX IF NOT EXISTS deliveries_sending ON deliveries (key) WHERE state='sending'")
        self.db.conn().execute("CREATE INDEX IF NOT EXISTS deliveries_in_doubt ON deliveries (key) WHERE in_doubt=1")

    def claim(self, key, lease_s, info) -> Claim:
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state, lease_until, in_doubt FROM deliveries WHERE key=?", (key,)).fetchone()
            if row and row[0] == "delivered":
                return Claim.DELIVERED
            if row and row[1] > now:
                return Claim.BUSY
            in_doubt = 1 if row else 0
            conn.execute(
                "INSERT OR REPLACE INTO deliveries VALUES (?, 'sending', ?, ?, ?, ?)",
                (key, now + lease_s, in_doubt, json.dumps(info, default=str), now),
            )
            return Claim.CLAIMED

    def mark_delivered(self, key, info):
        self.db.conn().execute(
            "INSERT INTO deliveries VALUES (?, 'delivered', 0, 0, ?, ?) ON CONFLICT (key) DO UPDATE"
            " SET state='delivered', lease_until=0, info=excluded.info, updated_at=excluded.updated_at",
            (key, json.dumps(info, default=str), time.time()),
        )

    def release(self, key):
        self.db.conn().execute("DELETE FROM deliveries WHERE key=? AND state='sending' AND in_doubt=0", (key,))
        self.db.conn().execute("UPDATE deliveries SET lease_until=0 WHERE key=? AND state='sending'", (key,))

    def expire_all_leases(self) -> int:
        """At start-up of the single embedded process: every claim still 'sending' belongs
        to the previous run, which died; expire them so they are taken over (in doubt)."""
        return self.db.conn().execute("UPDATE deliveries SET lease_until=0 WHERE state='sending'").rowcount

    def in_flight(self) -> dict[str, int]:
        """Claims being sent now and deliveries in doubt, from their partial indexes
        (``/status``; delivered ones are counted by shared/counters.py)."""
        conn = self.db.conn()
        return {"sending": conn.execute("SELECT count(*) FROM deliveries WHERE state='sending'").fetchone()[0],
                "in_doubt": conn.execute("SELECT count(*) FROM deliveries WHERE in_doubt=1").fetchone()[0]}

    def counts(self) -> dict[str, int]:
        """Every claim by state: reads the whole table (inspection and tests)."""
        rows = self.db.conn().execute(
            "SELECT state, count(*), sum(in_doubt) FROM deliveries GROUP BY state"
        ).fetchall()
        counts = {state: n for state, n, _ in rows}
        counts["in_doubt"] = sum(d or 0 for _, _, d in rows)
        return counts
