"""Firestore adapters (google-cloud-firestore): the DocumentStore and DeliveryLedger
of the GCP runtime. Same semantics as shared.adapters.sqlite:

* documents are JSON-shaped: values are normalised through JSON (``default=str``) before
  writing, so a datetime is stored as the same ISO string the SQLite store keeps;
* ``create`` writes only if absent (Firestore ``create``; AlreadyExists -> False);
* a delivery claim is one document per idempotency key, ``state`` 'sending' with a
  ``lease_until`` (epoch seconds) or 'delivered', read and written in one transaction.

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

from shared.ports import Claim


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

    def list(self, collection):
        return {snap.id: snap.to_dict() for snap in self._col(collection).order_by("__name__").stream()}

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
    """Delivery claims in collection ``deliveries`` (one document per key)."""

    def __init__(self, client: "firestore.Client | None" = None, *, collection: str = "deliveries", prefix: str = ""):
        self.client = client or make_client()
        self.collection = self.client.collection(f"{prefix}{collection}")

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
            transaction.set(ref, {"state": "sending", "lease_until": now + lease_s, "info": _jsonable(info),
                                  "updated_at": now})
            return Claim.CLAIMED

        return run(self.client.transaction())

    def mark_delivered(self, key, info):
        self.collection.document(key).set({"state": "delivered", "lease_until": None, "info": _jsonable(info),
                                           "updated_at": time.time()})

    def release(self, key):
        ref = self.collection.document(key)

        @firestore.transactional
        def run(transaction) -> None:
            snap = ref.get(transaction=transaction)
            if snap.exists and (snap.to_dict() or {}).get("state") == "sending":
                transaction.delete(ref)

        run(self.client.transaction())

    def state(self, key) -> dict[str, Any] | None:
        """The record for ``key`` (inspection and tests)."""
        snap = self.collection.document(key).get()
        return snap.to_dict() if snap.exists else None

    def delivered_count(self) -> int:
        return len(list(self.collection.where(filter=firestore.FieldFilter("state", "==", "delivered")).stream()))
