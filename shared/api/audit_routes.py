"""``GET /audit`` (``audit:read``): the audit log (shared.api.audit), newest first, with
filters and paging, through :meth:`shared.ports.DocumentStore.query`: entries by
``at`` then id (``since``/``until`` are its range; a cursor is the id of the last
entry of a page, whose ``at`` is read back), an exact ``action`` by its index; an
action prefix, ``user`` (id or email) and ``target`` prefix are matched here on the
entries the query returns, a batch at a time."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from shared.api.app import get_ports
from shared.api.audit import AUDIT
from shared.api.auth import require
from shared.api.permissions import Permission, Principal

router = APIRouter(tags=["audit"])


class AuditEntry(BaseModel):
    id: str
    at: str
    action: str
    target: str
    user_id: str | None
    email: str | None
    role: str | None
    via: str
    before: Any = None
    after: Any = None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next (older) page; null on the last")


READ_BATCH = 500  # entries read per query when the filters matched here may leave many out


def _stored(at: datetime | None) -> str | None:
    """``at`` as an entry's ``at`` is written (UTC ISO 8601), which sorts as text."""
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat()


@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first")
def list_audit(
    request: Request,
    _: Annotated[Principal, Depends(require(Permission.AUDIT_READ))],
    action: str | None = Query(None, description="e.g. keys.create; ending in '.' matches every action it starts"),
    user: str | None = Query(None, description="a user's id or email"),
    target: str | None = Query(None, description="targets starting with this, e.g. users/ or destinations/pacs"),
    since: datetime | None = Query(None, description="entries at or after this time (naive: UTC)"),
    until: datetime | None = Query(None, description="entries before this time (naive: UTC)"),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> AuditPage:
    user = user.strip().lower() if user else None
    exact = {"action": action} if action and not action.endswith(".") else None

    def wanted(e: dict) -> bool:
        return ((not action or exact is not None or e["action"].startswith(action))
                and (not user or user in (e.get("user_id"), (e.get("email") or "").lower()))
                and (not target or e["target"].startswith(target)))

    docs = get_ports(request).docs
    batch = limit + 1 if not (user or target or (action and exact is None)) else max(limit + 1, READ_BATCH)
    found: list[tuple[str, dict]] = []
    position = None
    if cursor:
        last = docs.get(AUDIT, cursor)
        if last is None:
            raise HTTPException(400, f"cursor {cursor!r} is not one this server gave")
        position = (last["at"], cursor)
    while len(found) <= limit:
        got = docs.query(AUDIT, where=exact, order_by="at", descending=True, at_least=_stored(since),
                         below=_stored(until), after=position, limit=batch)
        found += [(i, e) for i, e in got if wanted(e)]
        if len(got) < batch:
            break
        position = (got[-1][1]["at"], got[-1][0])
    page = found[:limit]
    return AuditPage(items=[AuditEntry(id=i, **e) for i, e in page],
                     next_cursor=page[-1][0] if len(found) > limit else None)
