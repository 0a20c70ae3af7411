"""The Secrets port (shared.ports.Secrets) over the environment and files: ``env:NAME``
and ``file:/path`` references. The embedded runtime uses it as is; the GCP runtime's
:class:`shared.adapters.secret_manager.SecretManagerSecrets` adds ``gsm:``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from shared.errors import SecretError


class LocalSecrets:
    schemes = ("env", "file")

    def __init__(self, env: Mapping[str, str] | None = None):
        self._env = env

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
        return self._other(scheme, name, ref)

    def text(self, ref: str) -> str:
        return self.get(ref).decode().strip()

    def _other(self, scheme: str, name: str, ref: str) -> bytes:
        if scheme == "gsm":
            raise SecretError(f"secret {ref}: Secret Manager references are read by the GCP runtime and the"
                              " gateway container; here use env: or file:")
        raise SecretError(f"secret {ref}: unknown scheme {scheme!r} (use {', '.join(s + ':' for s in self.schemes)})")
