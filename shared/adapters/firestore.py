"""Firestore adapters (google-cloud-firestore): the DocumentStore and DeliveryLedger
of the GCP runtime. Same semantics as shared.adapters.sqlite:

* documents are JSON-shaped: values are normalised through JSON (``default=str``) before
  writing, so a datetime is stored as the same ISO string the SQLite store keeps;
* ``create`` writes only if absent (Firestore ``create``; AlreadyExists -> False);
* a delivery claim is one document per idempotency key, ``state`` 'sending' with a
  ``lease_until`` (epoch seconds) or 'delivered', plus ``in_doubt`` (a claim taken over
  after its lease ran out), read and written in one transaction.
  A claim whose transaction keeps losing to concurrent ones (Aborted after every
  retry) answers BUSY: someone else holds or is taking the key, retry later.

Only the GCP runtime imports this module. ``FIRESTORE_EMULATOR_HOST`` is honoured by
the client itself.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from shared.ports import ID, Claim


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(doc, default=str))


def make_client(project: str | None = None, database: str | None = None) -> "firestore.Client":
    return firestore.Client(project=project or os.environ.get("GOOGLE_CLOUD_PROJECT"),
                            database=database or os.environ.get("AXIOM_FIRESTORE_DATABASE") or "(default)")


class FirestoreDocumentStore:
    """Documents by (collection, id), a top-level Firestore collection each.
    ``prefix`` is prepended to collection names (isolation of several deployments or
    tests in one database)."""

    def __init__(self, client: "firestore.Client | None" = None, *, prefix: str = ""):
        self.client = client or make_client()
        self.prefix = prefix

    def _col(self, collection: str):
        return self.client.collection(f"{self.prefix}{collection}")

    def get(self, collection, doc_id):
        snap = self._col(collection).document(doc_id).get()
        return snap.to_dict() if snap.exists else None

    def set(self, collection, doc_id, doc):
        self._col(collection).document(doc_id).set(_jsonable(doc))

    def create(self, collection, doc_id, doc) -> bool:
        try:
            self._col(collection).document(doc_id).create(_jsonable(doc))
        except (gexc.AlreadyExists, gexc.Conflict):
            return False
        return True

    def delete(self, collection, doc_id):
        self._col(collection).document(doc_id).delete()

    def compare_and_set(self, changes) -> bool:
        refs = [(self._col(c).document(i), None if e is None else _jsonable(e), n) for c, i, e, n in changes]

        @firestore.transactional
        def run(transaction) -> bool:
            # every read before any write (a Firestore transaction's rule); a concurrent
            # commit to one of these documents makes the commit fail and the function rerun
            snaps = [ref.get(transaction=transaction) for ref, _, _ in refs]
            if any((snap.to_dict() if snap.exists else None) != expected
                   for snap, (_, expected, _) in zip(snaps, refs)):
                return False
            for ref, _, new in refs:
                transaction.delete(ref) if new is None else transaction.set(ref, _jsonable(new))
            return True

        try:
            return run(self.client.transaction(max_attempts=10))
        except gexc.Aborted:
            return False
        except ValueError as exc:  # retries exhausted: other writers kept winning
            if isinstance(exc.__cause__, gexc.Aborted):
                return False
            raise

    def list(self, collection):
        return {snap.id: snap.to_dict() for snap in self._col(collection).order_by("__name__").stream()}

    def query(self, collection, *, where=None, order_by=ID, descending=False, at_least=None, below=None,
              after=None, limit=None):
        # the composite indexes this needs are listed by shared/indexes.py
        # (terraform/firestore_indexes.json); the emulator needs none
        col = self._col(collection)
        direction = firestore.Query.DESCENDING if descending else firestore.Query.ASCENDING
        by_id = order_by == ID
        order = "__name__" if by_id else order_by
        value = (lambda v: col.document(v)) if by_id else (lambda v: v)  # ids are compared as references
        q = self._where(col, where)
        if at_least is not None:
            q = q.where(filter=firestore.FieldFilter(order, ">=", value(at_least)))
        if below is not None:
            q = q.where(filter=firestore.FieldFilter(order, "<", value(below)))
        q = q.order_by(order, direction=direction)
        if not by_id:
            q = q.order_by("__name__", direction=direction)
        if after is not None:
            q = q.start_after([col.document(after[-1])] if by_id else [after[0], col.document(after[1])])
        if limit is not None:
            q = q.limit(int(limit))
        return [(snap.id, snap.to_dict()) for snap in q.stream()]

    def count(self, collection, where=None):
        # a COUNT aggregation: billed per 1000 index entries, no document is read
        [[result]] = self._where(self._col(collection), where).count(alias="n").get()
        return int(result.value)

    @staticmethod
    def _where(q, where):
        for field, value in (where or {}).items():
            if field == ID or value is None or isinstance(value, (dict, list)):
                raise ValueError(f"{field}: a query compares a field with a string, a number or a boolean")
            q = q.where(filter=firestore.FieldFilter(field, "==", value))
        return q

    def increment(self, collection, doc_id, counts, fields=None):
        self.increment_many(collection, {doc_id: (counts, fields)})

    def increment_many(self, collection, changes):
        # server-side increments: no transaction, no lost update between instances; one commit
        batch = self.client.batch()
        for doc_id, (counts, fields) in changes.items():
            update = {name: firestore.Increment(n) for name, n in counts.items()}
            batch.set(self._col(collection).document(doc_id), {**_jsonable(fields or {}), **update}, merge=True)
        batch.commit()

    def replace_collections(self, docs: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Swap whole collections (loading a config file). Firestore batches hold at
        most 500 writes, so a very large config is written in several commits: the
        new documents first, then the stale ones are deleted."""
        writes = []
        for collection, items in docs.items():
            for doc_id, doc in items.items():
                writes.append(("set", self._col(collection).document(doc_id), _jsonable(doc)))
            for snap in self._col(collection).stream():
                if snap.id not in items:
                    writes.append(("delete", snap.reference, None))
        for start in range(0, len(writes), 450):
            batch = self.client.batch()
            for op, ref, doc in writes[start:start + 450]:
                batch.set(ref, doc) if op == "set" else batch.delete(ref)
            batch.commit()


class FirestoreDeliveryLedger:
    """Delivery claims in collection ``deliveries``, one document per key:
    ``{state: 'sending'|'delivered', lease_until, in_doubt, info, updated_at}``.
    Taking over a claim whose lease ran out (its sender died) marks the delivery
    ``in_doubt``: the peer may already have it, and it is sent again."""

    def __init__(self, client: "firestore.Client | None" = None, *, collection: str = "deliveries", prefix: str = "",
                 max_attempts: int = 10):
        self.client = client or make_client()
        self.max_attempts = max_attempts
        self.collection = self.client.collection(f"{prefix}{collection}")

    def _transaction(self):
        return self.client.transaction(max_attempts=self.max_attempts)

    def claim(self, key, lease_s, info) -> Claim:
        ref = self.collection.document(key)

        @firestore.transactional
        def run(transaction) -> Claim:
            now = time.time()
            snap = ref.get(transaction=transaction)
            row = snap.to_dict() if snap.exists else None
            if row and row.get("state") == "delivered":
                return Claim.DELIVERED
            if row and (row.get("lease_until") or 0) > now:
                return Claim.BUSY
            transaction.set(ref, {"state": "sending", "lease_until": now + lease_s, "in_doubt": row is not None,
                                  "info": _jsonable(info), "updated_at": now})
            return Claim.CLAIMED

        try:
            return run(self._transaction())
        except gexc.Aborted:
            return Claim.BUSY
        except ValueError as exc:
            # transaction retries exhausted: other workers kept winning the document,
            # so this one did not claim it; the caller retries later.
            if isinstance(exc.__cause__, gexc.Aborted):
                return Claim.BUSY
            raise

    def mark_delivered(self, key, info):
        ref = self.collection.document(key)

        @firestore.transactional
        def run(transaction) -> None:
            snap = ref.get(transaction=transaction)
            in_doubt = bool(snap.exists and (snap.to_dict() or {}).get("in_doubt"))
            transaction.set(ref, {"state": "delivered", "lease_until": 0, "in_doubt": in_doubt,
                                  "info": _jsonable(info), "updated_at": time.time()})

        run(self._transaction())

    def release(self, key):
        """Give a claim back after a failed send: forgotten if nothing was in doubt,
        otherwise kept (still in doubt) with its lease expired, so the next try may take it."""
        ref = self.collection.document(key)

        @firestore.transactional
        def run(transaction) -> None:
            snap = ref.get(transaction=transaction)
            row = snap.to_dict() if snap.exists else None
            if not row or row.get("state") != "sending":
                return
            if row.get("in_doubt"):
                transaction.update(ref, {"lease_until": 0})
            else:
                transaction.delete(ref)

        run(self._transaction())

    def expire_all_leases(self) -> int:
        """Expire every 'sending' claim (their senders are known to be dead); they are
        then taken over, in doubt. Returns how many."""
        n = 0
        batch = self.client.batch()
        for snap in self.collection.where(filter=firestore.FieldFilter("state", "==", "sending")).stream():
            batch.update(snap.reference, {"lease_until": 0})
            n += 1
            if n % 450 == 0:
                batch.commit()
                batch = self.client.batch()
        if n % 450:
            batch.commit()
        return n

    def state(self, key) -> dict[str, Any] | None:
        """The record for ``key`` (inspection and tests)."""
        snap = self.collection.document(key).get()
        return snap.to_dict() if snap.exists else None

    def counts(self) -> dict[str, int]:
        """Claims by state and those in doubt: COUNT aggregations, no document read."""
        def count(field, value) -> int:
            [[result]] = self.collection.where(filter=firestore.FieldFilter(field, "==", value)).count(
                alias="n").get()
            return int(result.value)

        counts = {state: n for state in ("delivered", "sending") if (n := count("state", state))}
        counts["in_doubt"] = count("in_doubt", True)
        return counts
