"""The Secrets port: config names a secret, never holds it.

References: ``env:NAME`` (environment variable), ``file:/path`` (a file, e.g. a mounted
Kubernetes/Cloud Run secret), ``gsm:projects/P/secrets/S/versions/V`` (Google Secret
Manager; its client is imported only when such a reference is read)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class SecretError(LookupError):
    """A secret that cannot be read; the message names the reference, never the value."""


class Secrets:
    def __init__(self, env: dict[str, str] | None = None):
        self._env = env
        self._gsm = None
        self._lock = threading.Lock()

    def get(self, ref: str) -> bytes:
        scheme, _, name = ref.partition(":")
        if scheme == "env":
            env = os.environ if self._env is None else self._env
            if name not in env:
                raise SecretError(f"secret {ref}: environment variable {name} is not set")
            return env[name].encode()
        if scheme == "file":
            try:
                return Path(name).read_bytes()
            except OSError as exc:
                raise SecretError(f"secret {ref}: {exc.strerror}") from None
        if scheme == "gsm":
            return self._secret_manager().access_secret_version(name=name).payload.data
        raise SecretError(f"secret {ref}: unknown scheme {scheme!r} (use env:, file: or gsm:)")

    def text(self, ref: str) -> str:
        return self.get(ref).decode().strip()

    def _secret_manager(self):
        with self._lock:
            if self._gsm is None:
                from google.cloud import secretmanager  # only the GCP runtime needs it

                self._gsm = secretmanager.SecretManagerServiceClient()
            return self._gsm
