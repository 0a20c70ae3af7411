"""Who may store: STOW-RS requests carry an API key (``X-API-Key: KEY``,
``Authorization: Api-Key KEY`` or ``Authorization: Bearer KEY``). Accepted: the API
keys of users whose role may store (``stow``: ingest, admin; shared.api.keys), and,
deprecated, the lines of the secret ``stow.api_keys``."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Mapping

from shared.api import keys as user_keys
from shared.api.permissions import Permission
from shared.config import StowInput
from shared.errors import SecretError
from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)

KEY_CACHE_S = 30.0  # how long keys read from the secret are reused
CHALLENGE = 'Bearer realm="axiom-flow STOW-RS"'  # WWW-Authenticate of a 401 (RFC 6750 3)


class ApiKeys:
    """The keys of ``stow.api_keys`` (one per line; blank lines and ``#`` comments
    ignored), read through the Secrets port and reused for ``ttl_s`` seconds."""

    def __init__(self, secrets: Secrets, ttl_s: float = KEY_CACHE_S):
        self.secrets = secrets
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[bytes]]] = {}

    def keys(self, ref: str) -> list[bytes]:
        with self._lock:
            hit = self._cache.get(ref)
            if hit and time.monotonic() - hit[0] < self.ttl_s:
                return hit[1]
        text = self.secrets.text(ref)
        keys = [line.strip().encode() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        with self._lock:
            self._cache[ref] = (time.monotonic(), keys)
        return keys

    def check(self, ref: str, presented: str) -> bool:
        given = presented.encode()
        ok = False
        for key in self.keys(ref):
            ok |= hmac.compare_digest(key, given)  # no early exit: time does not tell which key
        return ok


@dataclass(frozen=True)
class Denied:
    """Why a request is refused: 401 (no or a wrong key; answer with :data:`CHALLENGE`)
    or 503 (the keys cannot be read)."""

    status: int
    message: str


def presented_key(headers: Mapping[str, str]) -> str:
    key = headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "api-key") else ""


_deprecation_logged = threading.Event()


def authenticate(headers: Mapping[str, str], stow: StowInput, keys: ApiKeys, docs: DocumentStore,
                 peer: str = "") -> Denied | None:
    """None when the request's key is a user's API key whose role may store, or one of
    ``stow.api_keys``."""
    presented = presented_key(headers)
    if not presented:
        return Denied(401, "an API key is required: send it as X-API-Key or Authorization: Api-Key")
    try:
        principal = user_keys.verify(docs, presented)
    except user_keys.UnknownKey:
        principal = None  # perhaps one of stow.api_keys
    except user_keys.KeyRefused as exc:
        log.warning("STOW-RS: API key refused from %s: %s", peer, exc)
        return Denied(401, str(exc))
    if principal is not None:
        if principal.may(Permission.STOW):
            return None
        return Denied(403, f"role {principal.role.value} may not store (STOW-RS takes the roles ingest and admin)")
    if stow.api_keys is None:
        log.warning("STOW-RS: wrong API key from %s", peer)
        return Denied(401, "the API key is not valid")
    try:
        ok = keys.check(stow.api_keys, presented)
    except (SecretError, OSError) as exc:
        log.error("STOW-RS: API keys unreadable: %s", exc)
        return Denied(503, "API keys could not be read; see the server log")
    if not ok:
        log.warning("STOW-RS: wrong API key from %s", peer)
        return Denied(401, "the API key is not valid")
    if not _deprecation_logged.is_set():
        _deprecation_logged.set()
        log.warning("STOW-RS: a key of stow.api_keys was accepted; these keys are deprecated: give each sender a "
                    "user with the role ingest and an API key of its own (axiom-flow users, or POST /api/v1/users)")
    return None
