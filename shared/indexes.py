"""The indexes behind :meth:`shared.ports.DocumentStore.query`: which fields the
operator lists filter on (equality) and sort on, per collection. One list, read by
the SQLite adapter (expression indexes, created at start) and written out for
Firestore's composite indexes (``terraform/firestore_indexes.json``, checked against
this list by ``tests/unit/test_query.py``).

Firestore merges several equality indexes that end in the same sort field (index
merging), so one index per filter field serves any combination of them; SQLite
uses one of them and checks the other fields on the rows of that index range."""

from __future__ import annotations

from dataclasses import dataclass

from shared.ports import ID


@dataclass(frozen=True)
class Index:
    collection: str
    equals: str  # the field filtered on by equality
    order_by: str  # the sort (and range) field; ID: the document id
    descending: bool = False


# exception records (shared/exceptions.py): filters of GET /api/v1/exceptions and the bulk
# actions, oldest first (created_at, then id)
_EXCEPTION_FILTERS = ("archived", "status", "stage", "destination_id")
# the audit log (shared/api/audit.py): newest first (at, then id)
INDEXES: tuple[Index, ...] = (
    *(Index("exceptions", f, "created_at") for f in _EXCEPTION_FILTERS),
    Index("audit", "action", "at", descending=True),
)
# sort fields with no equality filter: a single-field index (SQLite: created here;
# Firestore: automatic)
ORDERS: tuple[tuple[str, str], ...] = (("exceptions", "created_at"), ("audit", "at"))


def firestore_indexes(prefix: str = "") -> list[dict]:
    """The composite indexes for Firestore, as Terraform's
    ``google_firestore_index`` takes them (collection, fields with order)."""
    out = []
    for index in INDEXES:
        direction = "DESCENDING" if index.descending else "ASCENDING"
        order = "__name__" if index.order_by == ID else index.order_by
        fields = [{"field_path": index.equals, "order": "ASCENDING"}, {"field_path": order, "order": direction}]
        if order != "__name__":
            fields.append({"field_path": "__name__", "order": direction})
        out.append({"collection": f"{prefix}{index.collection}", "fields": fields})
    return out
