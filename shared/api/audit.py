"""The audit log: every config change, exception action and key created or revoked,
append-only (created, never changed), with who did it and the before and after
(secret-looking fields masked). Admins query it (``GET /audit``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from shared.api.permissions import Principal
from shared.ports import Ports

AUDIT = "audit"
MASK = "***"
# a field whose name holds one of these is masked at any depth: values of secrets, and
# references to them (which say where a secret is kept)
SECRET_WORDS = ("password", "secret", "token", "private_key", "api_key", "key_hash", "salt")


def masked(value: Any) -> Any:
    """``value`` with every field whose name looks like a secret replaced by ``***``."""
    if isinstance(value, dict):
        return {k: MASK if any(w in str(k).lower() for w in SECRET_WORDS) and v not in (None, "") else masked(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def record(ports: Ports, principal: Principal | None, action: str, target: str, *,
           before: Any = None, after: Any = None) -> str:
    """Append one entry: ``action`` (e.g. ``config.replace``, ``exceptions.retry``,
    ``keys.create``) on ``target`` (e.g. ``destinations/pacs``) by ``principal`` (None:
    the command line on this host). Returns the entry's id, which sorts by time."""
    at = datetime.now(timezone.utc)
    entry_id = f"{at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
    ports.docs.create(AUDIT, entry_id, {
        "at": at.isoformat(), "action": action, "target": target,
        "user_id": principal.user_id if principal else None, "email": principal.email if principal else None,
        "role": principal.role.value if principal else None, "via": principal.via if principal else "cli",
        "before": masked(before), "after": masked(after),
    })
    return entry_id
