"""API keys in the DocumentStore port. A key is ``prefix.secret``: the prefix (8
characters, public) is the id of its document in ``api_keys``; the secret (32 random
bytes, URL-safe base64) is shown once, when the key is made, and only a salted hash of
it is kept. A key acts for its user, with the user's role (shared.api.users).

The hash is PBKDF2-HMAC-SHA256 with a salt of its own per key (algorithm, iterations
and salt are kept with the digest, so they can change later). The secret has 256
random bits, so no amount of stretching makes guessing easier or harder; the salted
hash is there so that a copy of the store holds no usable key. A low iteration count
keeps each request cheap (STOW-RS checks keys before reading a body).

When a key was last used is kept in ``api_key_uses`` (a document of its own, so this
write never races with a revocation), written at most once a minute per key and
process rather than on every request."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.api import users
from shared.api.permissions import Principal
from shared.ports import DocumentStore

API_KEYS = "api_keys"
API_KEY_USES = "api_key_uses"
PREFIX_LENGTH = 8
SECRET_BYTES = 32
ITERATIONS = 2_000
LAST_USED_EVERY_S = 60.0
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_PREFIX = re.compile(rf"^[a-z0-9]{{{PREFIX_LENGTH}}}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{20,200}$")


class KeyRefused(Exception):
    """The key does not hold. ``str()`` is the answer to the caller: it never repeats the key."""


class UnknownKey(KeyRefused):
    """No key has this prefix (or the text is not shaped like a key at all)."""

    def __init__(self):
        super().__init__("the API key is not valid")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)


def _hash(secret: str) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    return {"alg": "pbkdf2_sha256", "iterations": ITERATIONS, "salt": _b64(salt),
            "digest": _b64(_digest(secret, salt, ITERATIONS))}


def _matches(stored: dict[str, Any], secret: str) -> bool:
    if stored.get("alg") != "pbkdf2_sha256":
        return False
    given = _digest(secret, _unb64(stored["salt"]), int(stored["iterations"]))
    return hmac.compare_digest(given, _unb64(stored["digest"]))


def parse(presented: str) -> tuple[str, str]:
    """(prefix, secret) of a key; UnknownKey if the text is not shaped like one."""
    prefix, dot, secret = presented.strip().partition(".")
    if not dot or not _PREFIX.match(prefix) or not _SECRET.match(secret):
        raise UnknownKey()
    return prefix, secret


def summary(prefix: str, doc: dict[str, Any], last_used: str | None = None) -> dict[str, Any]:
    """What may be shown of a key: never its hash."""
    return {"prefix": prefix, "user_id": doc["user_id"], "name": doc.get("name"), "created": doc["created"],
            "expires_at": doc.get("expires_at"), "last_used": last_used, "revoked": bool(doc.get("revoked")),
            "revoked_at": doc.get("revoked_at")}


def create(docs: DocumentStore, user_id: str, *, name: str | None = None,
           expires_at: datetime | None = None) -> tuple[str, dict[str, Any]]:
    """A new key for ``user_id``: (the key, to show once; its summary)."""
    if users.get(docs, user_id) is None:
        raise users.UserError(404, "no such user")
    if expires_at is not None:
        expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=timezone.utc)
        if expires_at <= datetime.now(timezone.utc):
            raise users.UserError(422, "expires_at is in the past")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    doc = {"user_id": user_id, "name": name, "created": users.now_iso(),
           "expires_at": expires_at.astimezone(timezone.utc).isoformat() if expires_at else None,
           "revoked": False, "revoked_at": None, "hash": _hash(secret)}
    while True:  # a prefix already taken (41 random bits) is drawn again
        prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
        if docs.create(API_KEYS, prefix, doc):
            return f"{prefix}.{secret}", summary(prefix, doc)


def _last_used_at(docs: DocumentStore, prefix: str) -> str | None:
    return (docs.get(API_KEY_USES, prefix) or {}).get("last_used")


def of_user(docs: DocumentStore, user_id: str) -> list[dict[str, Any]]:
    """Summaries of ``user_id``'s keys, newest first."""
    found = [summary(p, d, _last_used_at(docs, p)) for p, d in docs.list(API_KEYS).items() if d["user_id"] == user_id]
    return sorted(found, key=lambda k: k["created"], reverse=True)


def revoke(docs: DocumentStore, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Revoke a key (it is kept, marked revoked); (before, after) summaries. Revoking a
    revoked key changes nothing. KeyError: no such key."""
    doc = docs.get(API_KEYS, prefix) if _PREFIX.match(prefix) else None
    if doc is None:
        raise KeyError(prefix)
    last_used = _last_used_at(docs, prefix)
    before = summary(prefix, doc, last_used)
    if not doc.get("revoked"):
        doc = {**doc, "revoked": True, "revoked_at": users.now_iso()}
        docs.set(API_KEYS, prefix, doc)
    return before, summary(prefix, doc, last_used)


def revoke_all(docs: DocumentStore, user_id: str) -> list[str]:
    """Revoke every key of ``user_id``; the prefixes revoked now."""
    revoked = []
    for prefix, doc in docs.list(API_KEYS).items():
        if doc["user_id"] == user_id and not doc.get("revoked"):
            revoke(docs, prefix)
            revoked.append(prefix)
    return revoked


class _LastUsed:
    """When this process last wrote each key's last-used time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._written: dict[str, float] = {}

    def touch(self, docs: DocumentStore, prefix: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._written.get(prefix, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
                return
            self._written[prefix] = now
        docs.set(API_KEY_USES, prefix, {"last_used": users.now_iso()})


_last_used = _LastUsed()


def verify(docs: DocumentStore, presented: str) -> Principal:
    """The user ``presented`` acts for. KeyRefused (UnknownKey for no such key): wrong,
    revoked or expired, or its user is gone or disabled."""
    prefix, secret = parse(presented)
    doc = docs.get(API_KEYS, prefix)
    if doc is None:
        raise UnknownKey()
    if not _matches(doc["hash"], secret):
        raise KeyRefused("the API key is not valid")
    # only the key's holder gets this far: telling them why is safe
    if doc.get("revoked"):
        raise KeyRefused("the API key has been revoked")
    if doc.get("expires_at") and datetime.fromisoformat(doc["expires_at"]) <= datetime.now(timezone.utc):
        raise KeyRefused("the API key has expired")
    user = users.get(docs, doc["user_id"])
    if user is None or user.disabled:
        raise KeyRefused("the API key's user is disabled or deleted")
    _last_used.touch(docs, prefix)
    return Principal(user_id=user.id, email=user.email, role=user.role, via="api_key", key_prefix=prefix)


def expiry(days: int | None) -> datetime | None:
    return datetime.now(timezone.utc) + timedelta(days=days) if days else None
