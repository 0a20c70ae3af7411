"""The embedded ``/status`` counts from the status counters and from indexes: with
50,000 exception records and 50,000 delivered ledger rows it reads none of them (every
statement it runs on the state database is an index search, or a scan of a partial
index of the claims in flight), and its numbers are right."""

from __future__ import annotations

import json
import time

from shared.counters import COUNTERS
from shared.exceptions import EXCEPTIONS
from shared.runtime.local import EmbeddedRuntime
from tests.unit.test_query import plans, statements

N = 50_000
PARTIAL_INDEXES = ("deliveries_sending", "deliveries_in_doubt")  # the claims in flight only


def test_status_with_50k_records_reads_counters_and_indexes_only(tmp_path):
    config = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
              "rulesets": [{"id": "r", "rules": [{"id": "all", "destinations": ["archive"]}]}]}
    from shared.config import parse_config

    runtime = EmbeddedRuntime(parse_config(config), tmp_path / "data", http_port=None, poll_sources=False)
    try:
        now = time.time()
        with runtime.docs.db.transaction() as conn:
            conn.executemany("INSERT INTO documents VALUES (?,?,?,?)", (
                (EXCEPTIONS, f"r{i}", json.dumps({"id": f"r{i}", "status": "failed", "archived": False,
                                                  "created_at": f"2026-05-01T00:00:{i % 60:02d}+00:00"}), now)
                for i in range(N)))
            conn.executemany("INSERT INTO deliveries VALUES (?, 'delivered', 0, ?, '{}', ?)",
                             ((f"k{i}", int(i == 7), now) for i in range(N)))
            conn.executemany("INSERT INTO deliveries VALUES (?, 'sending', ?, 0, '{}', ?)",
                             ((f"s{i}", now + 60, now) for i in range(3)))
        runtime.docs.increment(COUNTERS, "destination:archive", {"enqueued": N + 3, "delivered": N})

        with statements(runtime.docs) as run:
            status = runtime.status()
        assert status["exceptions"] == N
        assert status["deliveries"] == {"delivered": N, "sending": 3, "in_doubt": 1}
        found = plans(runtime.docs, run)
        assert len(found) >= 4, run  # counters, exceptions, sending, in doubt
        for sql, plan in found.items():
            for step in plan:
                if step.startswith("SCAN"):
                    assert any(f"INDEX {name}" in step for name in PARTIAL_INDEXES), (sql, plan)
                else:
                    assert "INDEX" in step, (sql, plan)
        assert not any("data FROM documents WHERE collection='exceptions'" in sql for sql in run)
    finally:
        runtime.stop()
