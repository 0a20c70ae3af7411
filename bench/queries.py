"""What the status counters, the config revision reads and the indexed lists cost in
the embedded runtime (SQLite).

    .venv/bin/python bench/queries.py [--ops 10000] [--sizes 10000,100000]

1. ``counters.count`` (one ``DocumentStore.increment``: a write transaction) and
   one ``CachedConfig()`` call with ``watch_revision`` (one ``get`` of the revision
   document), ``--ops`` times each on a fresh state.db as the runtime opens it; and how
   many of each one instance makes, counted by running a CT through match, morph and
   route to a filesystem destination over the same stores. Printed per operation and
   per instance, to be set against an instance's cost in bench/results/route.md.
2. ``GET /api/v1/exceptions``'s page read (``exceptions.find_exceptions``, 100 records, a
   status filter) on a collection of each ``--sizes`` exception records: the first
   page and a page 90% of the way through (by its cursor); the median of 20 reads.
   For contrast, once per size, what the list cost before (every record read and
   filtered in the process), and ``count`` (an index count, which does grow).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.data import get_testdata_file  # noqa: E402

from shared import counters, exceptions, stages  # noqa: E402
from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.config.store import REVISION, replace_config  # noqa: E402
from shared.exceptions import EXCEPTIONS, ExceptionFilter  # noqa: E402
from shared.runtime.configcache import CachedConfig  # noqa: E402
from tests.support.stageports import build_ports, ingest  # noqa: E402

PAGE = 100
READS = 20
CONFIG = {"listeners": [{"id": "main", "port": 0}],
          "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
          "rulesets": [{"id": "r", "rules": [{"id": "all", "destinations": ["archive"]}]}]}


def per_op_us(n: int, op) -> float:
    start = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - start) / n * 1e6


def per_instance_calls(tmp: Path) -> tuple[int, int]:
    """Counter writes and revision reads of one instance through match, morph, route."""
    ports = build_ports(tmp, CONFIG)
    replace_config(ports.docs, parse_config(CONFIG))
    ports.config = CachedConfig(ports.docs, watch_revision=True)
    increments, revision_reads = [], []
    docs_class = type(ports.docs)
    original_increment, original_get = docs_class.increment, docs_class.get

    def increment(self, *args, **kwargs):
        increments.append(args[1])
        return original_increment(self, *args, **kwargs)

    def get(self, collection, doc_id):
        if (collection, doc_id) == REVISION:
            revision_reads.append(1)
        return original_get(self, collection, doc_id)

    event = ingest(ports, Path(get_testdata_file("CT_small.dcm")))
    docs_class.increment, docs_class.get = increment, get
    try:
        plan = stages.match(ports, event)
        assert plan is not None
        deliveries = stages.morph(ports, plan)
        assert [stages.route(ports, d) for d in deliveries] == ["delivered"], "the instance was not delivered"
    finally:
        docs_class.increment, docs_class.get = original_increment, original_get
    return len(increments), len(revision_reads)


def fill_exceptions(docs: SQLiteDocumentStore, n: int) -> None:
    """``n`` records as record_exception writes them (3 statuses, 4 destinations), one
    per millisecond, in one transaction."""
    now = time.time()
    rows = []
    for i in range(n):
        record_id = f"{i:08x}" + "0" * 24
        created = f"2026-05-01T{i // 3_600_000 % 24:02d}:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}000+00:00"
        rows.append((EXCEPTIONS, record_id, json.dumps({
            "id": record_id, "stage": "route", "status": ("failed", "held", "refused")[i % 3],
            "reason": "association rejected", "created_at": created, "archived": False,
            "attempts": [{"at": created, "reason": "association rejected"}], "attempt_count": 1,
            "destination_id": f"d{i % 4}", "sop_instance_uid": f"1.2.826.0.1.{i}", "retry": None}), now))
    with docs.db.transaction() as conn:
        conn.executemany("INSERT INTO documents VALUES (?,?,?,?)", rows)


def median_ms(op) -> float:
    times = []
    for _ in range(READS):
        start = time.perf_counter()
        op()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def lists(tmp: Path, n: int) -> dict[str, float]:
    docs = SQLiteDocumentStore(SQLiteDatabase(tmp / f"lists-{n}.db"))
    fill_exceptions(docs, n)

    class Ports:
        pass

    ports = Ports()
    ports.docs = docs
    where = ExceptionFilter(status="failed")
    matching = docs.count(EXCEPTIONS, where.indexed())
    # the record 90% of the way through the matches, found outside the timing
    deep_id, deep = docs.db.conn().execute(
        "SELECT id, data FROM documents WHERE collection='exceptions' AND json_extract(data, '$.status')='failed'"
        " ORDER BY json_extract(data, '$.created_at'), id LIMIT 1 OFFSET ?", (matching * 9 // 10,)).fetchone()
    cursor = exceptions.encode_cursor(json.loads(deep))
    first_page, _ = exceptions.find_exceptions(ports, where, limit=PAGE)
    deep_page, _ = exceptions.find_exceptions(ports, where, limit=PAGE, after=cursor)
    assert len(first_page) == len(deep_page) == PAGE and deep_page[0]["id"] > deep_id
    start = time.perf_counter()
    everything = [r for r in docs.list(EXCEPTIONS).values() if where.matches(r)]
    read_all_ms = (time.perf_counter() - start) * 1000
    assert len(everything) == matching
    return {
        "first_page_ms": median_ms(lambda: exceptions.find_exceptions(ports, where, limit=PAGE)),
        "deep_page_ms": median_ms(lambda: exceptions.find_exceptions(ports, where, limit=PAGE, after=cursor)),
        "count_ms": median_ms(lambda: docs.count(EXCEPTIONS, where.indexed())),
        "read_all_ms": read_all_ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-queries-"))
    try:
        db = SQLiteDatabase(tmp / "state.db")  # synchronous=NORMAL, WAL: as the runtime's
        docs = SQLiteDocumentStore(db)
        replace_config(docs, parse_config(CONFIG))
        fill_exceptions(docs, 10_000)  # a store with records: their indexes do not slow the counters

        class Ports:
            pass

        ports = Ports()
        ports.docs = docs
        config = CachedConfig(docs, watch_revision=True)
        config()
        counter_us = per_op_us(args.ops, lambda: counters.count(ports, "destination:archive", delivered=1))
        revision_us = per_op_us(args.ops, config)
        writes, reads = per_instance_calls(tmp / "instance")
        print(f"counter write (increment)     {counter_us:8.1f} us/op  ({args.ops} ops)")
        print(f"config revision read          {revision_us:8.1f} us/op  ({args.ops} ops)")
        print(f"per instance (1 destination): {writes} counter writes, {reads} revision reads"
              f" = {(writes * counter_us + reads * revision_us) / 1000:.2f} ms")
        print(f"counters_us_per_op={counter_us:.1f} revision_us_per_op={revision_us:.1f}"
              f" counter_writes_per_instance={writes} revision_reads_per_instance={reads}")
        for n in (int(s) for s in args.sizes.split(",")):
            got = lists(tmp, n)
            print(f"{n:>7} records, status=failed, page of {PAGE}: first {got['first_page_ms']:.2f} ms,"
                  f" 90% deep {got['deep_page_ms']:.2f} ms; count {got['count_ms']:.2f} ms;"
                  f" reading all (before) {got['read_all_ms']:.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
