"""Authentication for HTTP peers (DICOMweb destinations and sources) from config."""

from __future__ import annotations

import threading

import httpx

from shared.config import HttpAuth
from shared.ports import Secrets

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class GoogleAuth(httpx.Auth):
    """Bearer tokens from Application Default Credentials (google-auth), refreshed when
    they expire. The token request is google-auth's own, against the credentials'
    token URI."""

    def __init__(self):
        self._lock = threading.Lock()
        self._credentials = None

    def token(self) -> str:
        import google.auth
        import google.auth.transport.requests

        with self._lock:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=GOOGLE_SCOPES)
            if not self._credentials.valid:
                self._credentials.refresh(google.auth.transport.requests.Request())
            return self._credentials.token

    def auth_flow(self, request):
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request


_GOOGLE = GoogleAuth()


def httpx_auth(auth: HttpAuth, secrets: Secrets | None) -> tuple[httpx.Auth | None, dict[str, str]]:
    """(httpx auth, extra headers) for ``auth``."""
    if auth.type == "basic":
        return httpx.BasicAuth(auth.username, secrets.text(auth.password)), {}
    if auth.type == "bearer":
        return None, {"Authorization": f"Bearer {secrets.text(auth.token)}"}
    if auth.type == "header":
        return None, {auth.header: secrets.text(auth.value)}
    if auth.type == "google":
        return _GOOGLE, {}
    return None, {}
