"""``GET /audit`` (``audit:read``): the audit log (shared.api.audit), newest first, with
filters and paging. The DocumentStore port has no queries, so the entries are read
and filtered here: fine for the thousands of entries of config work; a store with
many more needs an indexed query in the port."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
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


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


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
    since, until = (_utc(since) if since else None), (_utc(until) if until else None)
    user = user.strip().lower() if user else None

    def wanted(entry_id: str, e: dict) -> bool:
        at = datetime.fromisoformat(e["at"])
        return ((cursor is None or entry_id < cursor)
                and (not action or (e["action"].startswith(action) if action.endswith(".") else e["action"] == action))
                and (not user or user in (e.get("user_id"), (e.get("email") or "").lower()))
                and (not target or e["target"].startswith(target))
                and (since is None or at >= since) and (until is None or at < until))

    entries = get_ports(request).docs.list(AUDIT)
    found = [i for i in sorted(entries, reverse=True) if wanted(i, entries[i])]  # ids sort by time
    page = found[:limit]
    return AuditPage(items=[AuditEntry(id=i, **entries[i]) for i in page],
                     next_cursor=page[-1] if len(found) > limit else None)
