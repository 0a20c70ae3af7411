"""Destinations, one model per ``type``; senders are built from them by
:func:`shared.destinations.build_sender`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from shared.config.base import Doc
from shared.config.peers import TLS, HealthcareStore, HttpAuth
from shared.templates import check_name_template


class Retry(Doc):
    max_attempts: int = Field(default=5, ge=1, le=100)
    initial_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=300.0, gt=0)


class DestinationBase(Doc):
    id: str
    enabled: bool = True
    retry: Retry = Field(default_factory=Retry)
    max_concurrency: int = Field(default=4, ge=1, le=64)  # sends in flight to this destination
    # The peer already has an instance with this SOP Instance UID and different bytes:
    # "exception" records it and stops; "overwrite" replaces it where the peer allows.
    on_conflict: Literal["exception", "overwrite"] = "exception"


class FilesystemDestination(DestinationBase):
    type: Literal["filesystem"]
    path: str  # relative paths are taken relative to the data dir
    name_template: str = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

    _template = field_validator("name_template")(lambda cls, v: check_name_template(v))


class CStoreDestination(DestinationBase):
    type: Literal["cstore"]
    ae_title: str = Field(max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae: str = Field(default="AXIOM", max_length=16)
    max_pdu: int = Field(default=131072, ge=0)
    timeout_s: float = Field(default=30.0, gt=0)
    tls: TLS | None = None


class DicomWebDestination(DestinationBase):
    """A generic DICOMweb STOW-RS peer (PS3.18 section 10.5)."""

    type: Literal["dicomweb"]
    url: str = Field(pattern=r"^https?://")  # the service base, e.g. http://pacs/dicom-web
    auth: HttpAuth = Field(default_factory=HttpAuth)
    batch_max_instances: int = Field(default=1, ge=1, le=1000)
    batch_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    timeout_s: float = Field(default=60.0, gt=0)


class HealthcareDestination(HealthcareStore, DestinationBase):
    """A Healthcare API DICOM store, by STOW-RS with Google credentials."""

    type: Literal["healthcare"]
    timeout_s: float = Field(default=60.0, gt=0)


class GCSDestination(DestinationBase):
    type: Literal["gcs"]
    bucket: str
    name_template: str = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

    _template = field_validator("name_template")(lambda cls, v: check_name_template(v))


Destination = Annotated[
    Union[FilesystemDestination, CStoreDestination, DicomWebDestination, HealthcareDestination, GCSDestination],
    Field(discriminator="type"),
]
