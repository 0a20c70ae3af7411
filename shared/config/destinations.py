"""Destinations, one model per ``type``; senders are built from them by
:func:`shared.destinations.build_sender`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from shared.config.base import Doc
from shared.config.peers import TLS, HealthcareStore, HttpAuth
from shared.templates import check_name_template


class Retry(Doc):
    """How a failed send is retried: the wait doubles from ``initial_backoff_s`` after each
    attempt, up to ``max_backoff_s``; after ``max_attempts`` the delivery becomes an
    exception record (status ``failed``) for an operator to retry."""

    max_attempts: int = Field(default=5, ge=1, le=100,
                              description="Attempts in all (the first send included) before giving up.")
    initial_backoff_s: float = Field(default=1.0, gt=0, description="Seconds to wait after the first failure.")
    max_backoff_s: float = Field(default=300.0, gt=0, description="The longest wait between two attempts, in seconds.")


class DestinationBase(Doc):
    id: str = Field(examples=["archive"], description="Unique id of the destination; rules name it in `destinations`.")
    enabled: bool = Field(
        default=True,
        description="Send to this destination; while false, deliveries to it are held and sent once it is enabled.")
    retry: Retry = Field(default_factory=Retry, description="How failed sends are retried.")
    max_concurrency: int = Field(default=4, ge=1, le=64, description="Sends in flight to this destination at most.")
    on_conflict: Literal["exception", "overwrite"] = Field(
        default="exception",
        description="When the peer already has an instance with this SOP Instance UID and different bytes: "
                    "`exception` records an exception and stops; `overwrite` replaces it where the peer allows.")


class FilesystemDestination(DestinationBase):
    """A folder: each instance is written as one Part 10 file (PS3.10)."""

    type: Literal["filesystem"] = Field(description="Selects this kind of destination.")
    path: str = Field(examples=["out", "/srv/dicom/archive"],
                      description="The folder; a relative path is taken relative to the data dir.")
    name_template: str = Field(
        default="{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        examples=["{PatientID}/{StudyDate}/{SOPInstanceUID}.dcm"],
        description="Each file's path under `path`, built from tag values (only letters, digits, `.`, `_` and `-` "
                    "are kept of each value, so no name leaves the folder).")

    _template = field_validator("name_template")(lambda cls, v: check_name_template(v))


class CStoreDestination(DestinationBase):
    type: Literal["cstore"] = Field(description="Selects this kind of destination.")
    ae_title: str = Field(max_length=16, examples=["PACS"], description="The peer's AE title (called AE).")
    host: str = Field(examples=["10.0.0.5", "pacs.example.org"], description="Host name or IP address of the peer.")
    port: int = Field(ge=1, le=65535, examples=[104, 11112], description="TCP port of the peer.")
    calling_ae: str = Field(default="AXIOM", max_length=16, description="Our AE title in the association.")
    max_pdu: int = Field(default=131072, ge=0,
                         description="Largest PDU we receive, in bytes, as offered to the peer; 0 offers no maximum.")
    timeout_s: float = Field(default=30.0, gt=0,
                             description="Seconds to wait for the association and for each response.")
    tls: TLS | None = Field(default=None, description="Connect with TLS; none: plain TCP.")


class DicomWebDestination(DestinationBase):
    """A generic DICOMweb STOW-RS peer (PS3.18 section 10.5)."""

    type: Literal["dicomweb"] = Field(description="Selects this kind of destination.")
    url: str = Field(pattern=r"^https?://", examples=["http://pacs/dicom-web"],
                     description="The DICOMweb service base URL (instances are posted to `{url}/studies`).")
    auth: HttpAuth = Field(default_factory=HttpAuth, description="How to authenticate to the peer.")
    batch_max_instances: int = Field(default=1, ge=1, le=1000,
                                     description="Instances sent together in one STOW-RS request at most.")
    batch_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024,
                                 description="Bytes of instances in one STOW-RS request at most.")
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for each HTTP response.")


class HealthcareDestination(HealthcareStore, DestinationBase):
    """A Healthcare API DICOM store, by STOW-RS with Google credentials."""

    type: Literal["healthcare"] = Field(description="Selects this kind of destination.")
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for each HTTP response.")


class GCSDestination(DestinationBase):
    """A Google Cloud Storage bucket: each instance is written as one Part 10 object."""

    type: Literal["gcs"] = Field(description="Selects this kind of destination.")
    bucket: str = Field(examples=["my-dicom-archive"], description="Name of the bucket.")
    name_template: str = Field(
        default="{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        examples=["ct/{StudyInstanceUID}/{SOPInstanceUID}.dcm"],
        description="Each object's name, built from tag values (only letters, digits, `.`, `_` and `-` are kept of "
                    "each value).")

    _template = field_validator("name_template")(lambda cls, v: check_name_template(v))


Destination = Annotated[
    Union[FilesystemDestination, CStoreDestination, DicomWebDestination, HealthcareDestination, GCSDestination],
    Field(discriminator="type"),
]
