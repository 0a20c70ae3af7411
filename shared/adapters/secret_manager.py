"""The Secrets port with Google Secret Manager (google-cloud-secret-manager, in the
``gcp`` extra): ``gsm:projects/P/secrets/S/versions/V`` references, plus the ``env:``
and ``file:`` ones of :class:`~shared.adapters.secrets.LocalSecrets`. The client is
created on the first ``gsm:`` read, so a process that names no such secret never
builds one."""

from __future__ import annotations

import threading
from typing import Any, Mapping

from shared.adapters.secrets import LocalSecrets
from shared.errors import SecretError


class SecretManagerSecrets(LocalSecrets):
    schemes = ("env", "file", "gsm")

    def __init__(self, env: Mapping[str, str] | None = None, *, client: Any = None, timeout_s: float = 30.0):
        super().__init__(env)
        self._client = client
        self._lock = threading.Lock()
        self.timeout_s = timeout_s

    def _other(self, scheme: str, name: str, ref: str) -> bytes:
        if scheme != "gsm":
            return super()._other(scheme, name, ref)
        from google.api_core import exceptions as gexc

        try:
            response = self.client().access_secret_version(name=name, timeout=self.timeout_s)
        except gexc.GoogleAPICallError as exc:  # NotFound, PermissionDenied, ...: the code, not the text
            raise SecretError(f"secret {ref}: Secret Manager answered {exc.__class__.__name__}") from None
        except (gexc.RetryError, OSError) as exc:
            raise SecretError(f"secret {ref}: Secret Manager unreachable ({exc.__class__.__name__})") from None
        return response.payload.data

    def client(self):
        with self._lock:
            if self._client is None:
                from google.cloud import secretmanager

                self._client = secretmanager.SecretManagerServiceClient()
            return self._client
