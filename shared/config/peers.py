"""How to reach a peer, shared by inputs and destinations: secrets named in config,
TLS for DICOM associations, HTTP authentication, a Healthcare API DICOM store."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from shared.config.base import Doc

# Secrets are named, never written into config: "env:NAME" (an environment variable),
# "file:/path", or "gsm:projects/P/secrets/S/versions/V" (Secret Manager). See shared.ports.Secrets.
SecretRef = Annotated[str, Field(pattern=r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|gsm:projects/.+)$")]


class TLS(Doc):
    """TLS for DICOM associations (PS3.15 Annex B.1, the TLS secure transport profile)."""

    ca: SecretRef | None = None  # PEM CA bundle to verify the peer; None: system CAs
    certificate: SecretRef | None = None  # PEM certificate chain presented to the peer
    key: SecretRef | None = None  # PEM private key for ``certificate``
    require_client_certificate: bool = True  # for listeners: mutual TLS
    check_hostname: bool = False  # PACS certificates rarely carry their IP/hostname

    @model_validator(mode="after")
    def _pair(self):
        if (self.certificate is None) != (self.key is None):
            raise ValueError("certificate and key go together")
        return self


class HttpAuth(Doc):
    """How to authenticate to an HTTP peer. ``google`` uses Application Default
    Credentials (the Healthcare API)."""

    type: Literal["none", "basic", "bearer", "header", "google"] = "none"
    username: str | None = None
    password: SecretRef | None = None
    token: SecretRef | None = None
    header: str | None = None  # header name for type "header", e.g. X-API-Key
    value: SecretRef | None = None

    @model_validator(mode="after")
    def _fields_for_type(self):
        need = {"basic": ("username", "password"), "bearer": ("token",), "header": ("header", "value")}.get(self.type, ())
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"auth type {self.type!r} needs {', '.join(missing)}")
        return self


class HealthcareStore(Doc):
    """A Google Cloud Healthcare API DICOM store (destination or source)."""

    project: str
    location: str
    dataset: str
    dicom_store: str
    endpoint: str = Field(default="https://healthcare.googleapis.com/v1", pattern=r"^https?://")

    @property
    def dicomweb_url(self) -> str:
        return (f"{self.endpoint}/projects/{self.project}/locations/{self.location}/datasets/{self.dataset}"
                f"/dicomStores/{self.dicom_store}/dicomWeb")
