"""Users of the API in the DocumentStore port: one document per user in ``users``
(id, email, role, created, disabled) and, for unique emails and lookup by email (a
Google ID token names its user by email), one in ``user_emails`` per email, whose id is
the email and which names the user. The same on SQLite (``serve``) and Firestore (GCP)."""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from shared.api.permissions import Role
from shared.ports import DocumentStore

USERS = "users"
USER_EMAILS = "user_emails"
# one @, no spaces; no "/" either: the email is a document id (Firestore forbids "/")
_EMAIL = re.compile(r"^[^@\s/]+@[^@\s/]+\.[^@\s/]+$")


class UserError(ValueError):
    """A change refused: ``status`` 404 (no such user), 409 (the email is taken, or the
    last admin would go) or 422 (a bad email)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class User:
    id: str
    email: str
    role: Role
    created: str  # ISO 8601, UTC
    disabled: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {**asdict(self), "role": self.role.value}

    @classmethod
    def from_doc(cls, user_id: str, doc: dict[str, Any]) -> "User":
        return cls(id=user_id, email=doc["email"], role=Role(doc["role"]), created=doc["created"],
                   disabled=bool(doc.get("disabled")))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def normal_email(email: str) -> str:
    """``email`` as stored and compared: trimmed, lower case; UserError(422) if it is
    not an email address."""
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise UserError(422, "not an email address")
    return email


def get(docs: DocumentStore, user_id: str) -> User | None:
    doc = docs.get(USERS, user_id) if user_id and "/" not in user_id else None
    return User.from_doc(user_id, doc) if doc else None


def by_email(docs: DocumentStore, email: str) -> User | None:
    try:
        index = docs.get(USER_EMAILS, normal_email(email))
    except UserError:
        return None
    user = get(docs, index["user_id"]) if index else None
    return user if user and user.email == normal_email(email) else None


def all_users(docs: DocumentStore) -> list[User]:
    return sorted((User.from_doc(i, d) for i, d in docs.list(USERS).items()), key=lambda u: u.id)


def _claim_email(docs: DocumentStore, email: str, user_id: str) -> None:
    """Take ``email`` for ``user_id`` (create-if-absent: of two concurrent claims one
    wins). An index entry whose user is gone (a create that died between its two
    writes, or a user deleted half-way) is taken over."""
    if docs.create(USER_EMAILS, email, {"user_id": user_id}):
        return
    held = docs.get(USER_EMAILS, email)
    if held and held["user_id"] != user_id and get(docs, held["user_id"]) is not None:
        raise UserError(409, "a user with this email already exists")
    docs.set(USER_EMAILS, email, {"user_id": user_id})


def create(docs: DocumentStore, email: str, role: Role, *, disabled: bool = False) -> User:
    user = User(id=secrets.token_hex(8), email=normal_email(email), role=Role(role), created=now_iso(),
                disabled=disabled)
    _claim_email(docs, user.email, user.id)
    docs.set(USERS, user.id, user.to_doc())
    return user


def _enabled_admins(docs: DocumentStore) -> list[User]:
    return [u for u in all_users(docs) if u.role is Role.ADMIN and not u.disabled]


def _keeps_an_admin(docs: DocumentStore, before: User, after: User | None) -> None:
    """Refuse (409) a change that leaves no enabled admin: nobody could manage users."""
    was_admin = before.role is Role.ADMIN and not before.disabled
    still = after is not None and after.role is Role.ADMIN and not after.disabled
    if was_admin and not still and [u.id for u in _enabled_admins(docs)] == [before.id]:
        raise UserError(409, "this is the last enabled admin: make another user admin first")


def update(docs: DocumentStore, user_id: str, *, email: str | None = None, role: Role | None = None,
           disabled: bool | None = None) -> tuple[User, User]:
    """Change the given fields; (before, after)."""
    before = get(docs, user_id)
    if before is None:
        raise UserError(404, "no such user")
    after = replace(before, email=normal_email(email) if email is not None else before.email,
                    role=Role(role) if role is not None else before.role,
                    disabled=disabled if disabled is not None else before.disabled)
    _keeps_an_admin(docs, before, after)
    if after.email != before.email:
        _claim_email(docs, after.email, user_id)
    docs.set(USERS, user_id, after.to_doc())
    if after.email != before.email:
        docs.delete(USER_EMAILS, before.email)
    return before, after


def delete(docs: DocumentStore, user_id: str) -> User:
    """Delete the user (their API keys stop working with them: see shared.api.keys)."""
    user = get(docs, user_id)
    if user is None:
        raise UserError(404, "no such user")
    _keeps_an_admin(docs, user, None)
    docs.delete(USERS, user_id)
    held = docs.get(USER_EMAILS, user.email)
    if held and held["user_id"] == user_id:
        docs.delete(USER_EMAILS, user.email)
    return user
