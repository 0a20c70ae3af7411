"""Roles and what each may do: one table, checked by every route
(``shared.api.auth.require``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    ADMIN = "admin"  # everything, users and keys included
    EDITOR = "editor"  # the config
    OPERATOR = "operator"  # exceptions: retry, release, archive
    VIEWER = "viewer"  # reads
    INGEST = "ingest"  # STOW-RS only


class Permission(str, Enum):
    CONFIG_READ = "config:read"
    CONFIG_WRITE = "config:write"
    RULES_TEST = "rules:test"
    EXCEPTIONS_READ = "exceptions:read"
    EXCEPTIONS_ACT = "exceptions:act"
    STATUS_READ = "status:read"
    USERS_MANAGE = "users:manage"
    AUDIT_READ = "audit:read"
    STOW = "stow"
    SPANNER_QUERY = "spanner:query"


_READ = {Permission.CONFIG_READ, Permission.EXCEPTIONS_READ, Permission.STATUS_READ, Permission.SPANNER_QUERY}
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.EDITOR: frozenset(_READ | {Permission.CONFIG_WRITE, Permission.RULES_TEST}),
    Role.OPERATOR: frozenset(_READ | {Permission.EXCEPTIONS_ACT, Permission.RULES_TEST}),
    Role.VIEWER: frozenset(_READ),
    Role.INGEST: frozenset({Permission.STOW}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (by id and email) with one role, and how they proved it."""

    user_id: str
    email: str
    role: Role
    via: str  # "api_key" or "google"
    key_prefix: str | None = None

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]
