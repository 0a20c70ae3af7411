"""Who is calling (:func:`authenticate`) and whether their role may (:func:`require`).

Credentials: an API key (``Authorization: Api-Key <key>`` or ``X-API-Key``,
shared.api.keys) or a Google ID token (``Authorization: Bearer <token>``), verified by
google-auth against the audience in ``AXIOM_API_AUDIENCE`` (comma-separated for
several) and Google's certificates (``AXIOM_GOOGLE_CERTS_URL`` to fetch them
elsewhere); the token's verified email names the user. 401 without credentials or
with bad ones (``WWW-Authenticate`` says which schemes), and for a disabled user;
403 for a role that may not."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Callable

import httpx
from fastapi import Depends, HTTPException, Request

from shared.api import keys, users
from shared.api.app import get_ports
from shared.api.permissions import Permission, Principal

log = logging.getLogger(__name__)

CHALLENGE = {"WWW-Authenticate": 'Api-Key, Bearer realm="axiom-flow"'}
AUDIENCE_ENV = "AXIOM_API_AUDIENCE"
CERTS_URL_ENV = "AXIOM_GOOGLE_CERTS_URL"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
CERTS_MAX_AGE_S = 3600.0  # Google's certificates are reused this long at most (their Cache-Control may say less)
CLOCK_SKEW_S = 30


def _refused(message: str) -> HTTPException:
    return HTTPException(401, message, headers=CHALLENGE)


def presented_credentials(headers) -> tuple[str, str]:
    """(scheme, credential) from the headers: ("api_key", key), ("bearer", token) or
    ("", "") for none; HTTPException(401) for an Authorization scheme not taken."""
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "api-key" and value.strip():
        return "api_key", value.strip()
    if scheme.lower() == "bearer" and value.strip():
        return "bearer", value.strip()
    if scheme:
        raise _refused("the Authorization header takes 'Api-Key <key>' or 'Bearer <Google ID token>'")
    key = headers.get("X-API-Key", "").strip()
    return ("api_key", key) if key else ("", "")


def authenticate(request: Request) -> Principal:
    """The caller, from the request's credentials; 401 when there are none that hold."""
    ports = get_ports(request)
    scheme, credential = presented_credentials(request.headers)
    if scheme == "api_key":
        try:
            return keys.verify(ports.docs, credential)
        except keys.KeyRefused as exc:
            raise _refused(str(exc)) from None
    if scheme == "bearer":
        return google_principal(ports.docs, credential)
    raise _refused("no credentials: send an API key (Authorization: Api-Key <key>, or X-API-Key) "
                   "or a Google ID token (Authorization: Bearer <token>)")


# --- Google ID tokens -------------------------------------------------------------------


class _Response:
    """A google.auth.transport.Response over an httpx response."""

    def __init__(self, status: int, headers: dict, data: bytes):
        self.status, self.headers, self.data = status, headers, data


class CachedCerts:
    """A google.auth.transport.Request that fetches with httpx and keeps a good answer
    as long as its Cache-Control max-age says (at most :data:`CERTS_MAX_AGE_S`): the
    certificates are fetched once in a while, not on every request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, _Response]] = {}

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        from google.auth import exceptions as gexc

        with self._lock:
            hit = self._cache.get(url)
            if method == "GET" and hit and hit[0] > time.monotonic():
                return hit[1]
        try:
            got = httpx.request(method, url, content=body, headers=headers, timeout=timeout or 10)
        except httpx.HTTPError as exc:
            raise gexc.TransportError(f"{url}: {exc}") from exc
        response = _Response(got.status_code, dict(got.headers), got.content)
        max_age = re.search(r"max-age=(\d+)", got.headers.get("Cache-Control", ""))
        keep = min(float(max_age.group(1)) if max_age else 300.0, CERTS_MAX_AGE_S)
        if method == "GET" and got.status_code == 200 and keep > 0:
            with self._lock:
                self._cache[url] = (time.monotonic() + keep, response)
        return response


_certs = CachedCerts()


def google_principal(docs, token: str) -> Principal:
    """The user a Google ID token names by its verified email; 401 if the token does
    not verify (signature, expiry, audience, issuer) or no enabled user has the email."""
    from google.auth import exceptions as gexc
    from google.oauth2 import id_token

    audience = [a.strip() for a in os.environ.get(AUDIENCE_ENV, "").split(",") if a.strip()]
    if not audience:
        raise _refused(f"Google ID tokens are not accepted here: no audience is configured ({AUDIENCE_ENV})")
    certs_url = os.environ.get(CERTS_URL_ENV) or GOOGLE_CERTS_URL
    try:
        claims = id_token.verify_token(token, _certs, audience=audience, certs_url=certs_url,
                                       clock_skew_in_seconds=CLOCK_SKEW_S)
    except gexc.TransportError as exc:
        log.error("API: Google's certificates could not be fetched: %s", exc)
        raise HTTPException(503, "Google's certificates could not be fetched; see the server log") from None
    except (ValueError, gexc.GoogleAuthError) as exc:
        log.info("API: Google ID token refused: %s", str(exc)[:200])
        raise _refused("the Google ID token is not valid (signature, expiry or audience)") from None
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise _refused("the Google ID token is not valid (issuer)")
    if not claims.get("email") or claims.get("email_verified") is not True:
        raise _refused("the Google ID token carries no verified email")
    user = users.by_email(docs, claims["email"])
    if user is None or user.disabled:
        raise _refused("no enabled user has the Google ID token's email")
    return Principal(user_id=user.id, email=user.email, role=user.role, via="google")


def require(permission: Permission) -> Callable[..., Principal]:
    """A route dependency: the caller, if their role has ``permission``; else 403."""

    def check(principal: Principal = Depends(authenticate)) -> Principal:
        if not principal.may(permission):
            raise HTTPException(403, f"role {principal.role.value} may not {permission.value}")
        return principal

    check.permission = permission  # read by the role x route test from the app's routes
    return check
