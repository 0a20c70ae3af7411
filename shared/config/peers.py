"""How to reach a peer, shared by inputs and destinations: secrets named in config,
TLS for DICOM associations, HTTP authentication, a Healthcare API DICOM store."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from shared.config.base import Doc

_SECRET_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|gsm:projects/.+)$")


def _secret_ref(value: str) -> str:
    if not _SECRET_REF.match(value):  # the value itself is not repeated: it may be the secret
        raise ValueError("not a secret reference: write env:NAME, file:/path or gsm:projects/P/secrets/S/versions/V "
                         "(a secret is never written in the config itself)")
    return value


# Secrets are named, never written into config (see shared.ports.Secrets).
SecretRef = Annotated[str, AfterValidator(_secret_ref),
                      Field(json_schema_extra={"pattern": _SECRET_REF.pattern})]
"""Where a secret is read from: ``env:NAME`` (an environment variable), ``file:/path``,
or ``gsm:projects/P/secrets/S/versions/V`` (Google Secret Manager)."""


class TLS(Doc):
    """TLS for DICOM associations (PS3.15 Annex B.1, the TLS secure transport profile)."""

    ca: SecretRef | None = Field(
        default=None, examples=["file:/etc/axiom/pacs-ca.pem"],
        description="Secret holding the PEM CA bundle the peer's certificate is verified against; "
                    "none: the system's CA certificates.")
    certificate: SecretRef | None = Field(
        default=None, examples=["file:/etc/axiom/tls/cert.pem"],
        description="Secret holding the PEM certificate chain presented to the peer; required for a "
                    "listener, given together with `key`.")
    key: SecretRef | None = Field(
        default=None, examples=["gsm:projects/P/secrets/axiom-tls-key/versions/latest"],
        description="Secret holding the PEM private key of `certificate`.")
    require_client_certificate: bool = Field(
        default=True,
        description="For listeners: require a client certificate signed by `ca` (mutual TLS); "
                    "ignored for outgoing associations.")
    # off by default: PACS certificates rarely carry their IP address or host name
    check_hostname: bool = Field(
        default=False,
        description="For outgoing associations: check that the peer's certificate names the host connected to.")

    @model_validator(mode="after")
    def _pair(self):
        if (self.certificate is None) != (self.key is None):
            raise ValueError("certificate and key go together")
        return self


class HttpAuth(Doc):
    """How to authenticate to an HTTP peer. ``google`` uses Application Default
    Credentials (the Healthcare API)."""

    type: Literal["none", "basic", "bearer", "header", "google"] = Field(
        default="none",
        description="The scheme: `none`; `basic` (username and password); `bearer` (a token); "
                    "`header` (a secret sent in a header of your choice); `google` (Application Default "
                    "Credentials).")
    username: str | None = Field(default=None, description="User name for `basic`.")
    password: SecretRef | None = Field(default=None, examples=["env:PACS_PASSWORD"],
                                       description="Secret holding the password for `basic`.")
    token: SecretRef | None = Field(default=None, examples=["file:/run/secrets/pacs-token"],
                                    description="Secret holding the bearer token for `bearer`.")
    header: str | None = Field(default=None, examples=["X-API-Key"],
                               description="Name of the HTTP header for `header`.")
    value: SecretRef | None = Field(default=None, examples=["env:PACS_API_KEY"],
                                    description="Secret holding the value of `header`.")

    @model_validator(mode="after")
    def _fields_for_type(self):
        need = {"basic": ("username", "password"), "bearer": ("token",), "header": ("header", "value")}.get(self.type, ())
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"auth type {self.type!r} needs {', '.join(missing)}")
        return self


class HealthcareStore(Doc):
    """A Google Cloud Healthcare API DICOM store (destination or source)."""

    project: str = Field(examples=["my-project"], description="Google Cloud project id of the store.")
    location: str = Field(examples=["europe-west4"], description="Region of the dataset.")
    dataset: str = Field(examples=["imaging"], description="Healthcare API dataset id.")
    dicom_store: str = Field(examples=["router-out"], description="DICOM store id within the dataset.")
    endpoint: str = Field(default="https://healthcare.googleapis.com/v1", pattern=r"^https?://",
                          description="Base URL of the Healthcare API; change it only for a test server or a "
                                      "regional endpoint.")

    @property
    def dicomweb_url(self) -> str:
        return (f"{self.endpoint}/projects/{self.project}/locations/{self.location}/datasets/{self.dataset}"
                f"/dicomStores/{self.dicom_store}/dicomWeb")
