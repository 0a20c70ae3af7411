"""DocumentStore.query and count on Firestore (the emulator): the same answers as
SQLite's for equality filters, order, time range, cursor pages and counts; ordering
and bounding by document id (the audit log); the exception list and its cursor over it;
the delivery ledger's counts as COUNT aggregations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared import exceptions
from shared.exceptions import EXCEPTIONS, ExceptionFilter
from shared.ports import ID
from tests.support.gcp import unique
from tests.unit.test_query import T0, at, expected, fill, pages


@pytest.fixture
def docs(firestore_emulator):
    from shared.adapters.firestore import FirestoreDocumentStore

    return FirestoreDocumentStore(prefix=unique("q"))


def test_filters_order_range_cursor_and_count(docs):
    made = fill(docs, 30)
    for where in (None, {"status": "failed"}, {"status": "held", "destination_id": "d1"}, {"archived": False},
                  {"archived": True, "stage": "route"}):
        assert [i for i, _ in docs.query(EXCEPTIONS, where=where, order_by="created_at")] == expected(made, where)
        assert [i for i, _ in docs.query(EXCEPTIONS, where=where, order_by="created_at", descending=True)] == \
            expected(made, where, reverse=True)
        lo, hi = at(3), at(11)
        assert [i for i, _ in docs.query(EXCEPTIONS, where=where, order_by="created_at", at_least=lo, below=hi)] \
            == expected(made, where, lo, hi)
        assert pages(docs, 4, where=where) == expected(made, where)
        assert docs.count(EXCEPTIONS, where) == len(expected(made, where))


def test_order_by_id_descending_with_an_id_range(docs):
    for i in range(12):
        docs.set("audit", f"2026{i:04d}-x", {"action": "keys.create" if i % 2 else "config.replace"})
    got = docs.query("audit", where={"action": "keys.create"}, order_by=ID, descending=True,
                     at_least="20260004", below="20260010", limit=2)
    assert [i for i, _ in got] == ["20260009-x", "20260007-x"]
    rest = docs.query("audit", where={"action": "keys.create"}, order_by=ID, descending=True,
                      at_least="20260004", after=(got[-1][0], got[-1][0]))
    assert [i for i, _ in rest] == ["20260005-x"]
    assert docs.count("audit", {"action": "keys.create"}) == 6


class _Ports:
    def __init__(self, docs):
        self.docs = docs


def test_the_exception_list_pages_over_firestore(docs):
    ports = _Ports(docs)
    made = [exceptions.record_exception(ports, stage="route", status="failed", reason=f"peer {n % 3}",
                                        destination_id="pacs") for n in range(9)]
    where = ExceptionFilter(status="failed", destination_id="pacs", reason="PEER 1", since=T0 - timedelta(days=1))
    seen, cursor = [], None
    while True:
        page, cursor = exceptions.find_exceptions(ports, where, limit=2, after=cursor)
        seen += [r["id"] for r in page]
        if cursor is None:
            break
    assert seen == [made[n] for n in (1, 4, 7)]
    ids, total = exceptions.select_exceptions(ports, ExceptionFilter(status="failed"))
    assert total == 9 and list(ids) == made


def test_ledger_counts_are_aggregations(firestore_emulator, docs):
    from shared.adapters.firestore import FirestoreDeliveryLedger
    from shared.ports import Claim

    ledger = FirestoreDeliveryLedger(docs.client, prefix=docs.prefix)
    for key in ("a", "b", "c"):
        assert ledger.claim(key, 600, {}) is Claim.CLAIMED
    ledger.mark_delivered("a", {})
    assert ledger.counts() == {"delivered": 1, "sending": 2, "in_doubt": 0}
