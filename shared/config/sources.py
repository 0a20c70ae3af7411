"""Inputs: DICOM listeners, the STOW-RS endpoint, and the pollers' sources (one model
per ``type``, polled by :mod:`shared.inputs.pollers`)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, StringConstraints

from shared.config.base import Doc, IPNetwork
from shared.config.peers import TLS, HealthcareStore, HttpAuth, SecretRef

AETitle = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]


class Listener(Doc):
    """A DICOM listener (C-ECHO, C-STORE). An association is refused with an
    A-ASSOCIATE-RJ (PS3.8 9.3.4) when its source address is outside ``allowed_sources``,
    its called AE title is not in ``called_ae_titles`` or its calling AE title is not in
    ``calling_ae_titles``; a list left unset checks nothing, so any called AE title is
    accepted, ``ae_title`` or not."""

    id: str
    ae_title: str = Field(default="AXIOM", max_length=16)
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    max_pdu: int = Field(default=131072, ge=0)
    tls: TLS | None = None
    called_ae_titles: list[AETitle] | None = Field(
        default=None, min_length=1,
        description="Called AE titles this listener answers to; others are rejected (called AE title not"
                    " recognised). Unset: any called AE title is accepted.",
        examples=[["AXIOM", "AXIOM_CT"]])
    calling_ae_titles: list[AETitle] | None = Field(
        default=None, min_length=1,
        description="Calling AE titles of the senders this listener accepts; others are rejected (calling AE"
                    " title not recognised). Unset: any sender.",
        examples=[["CT01", "MR_SCANNER"]])
    allowed_sources: list[IPNetwork] | None = Field(
        default=None, min_length=1,
        description="Source addresses accepted, as IPv4 or IPv6 networks in CIDR notation (a bare address is"
                    " one host); associations from elsewhere are rejected. Unset: any address.",
        examples=[["10.20.0.0/16", "192.168.1.7", "fd00::/8"]])


class StowInput(Doc):
    """The STOW-RS endpoint (PS3.18 section 10.5) of ``axiom-flow serve`` and the
    ``stow`` function. Clients send an API key in the X-API-Key header (or as
    ``Authorization: Api-Key``, or a Bearer token): a user's key whose role may store
    (ingest, admin), or, deprecated, one of the lines of the secret ``api_keys``."""

    enabled: bool = True
    id: str = "stow"
    api_keys: SecretRef | None = None  # deprecated; None: only users' API keys
    max_request_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1024)


class SourceBase(Doc):
    id: str
    enabled: bool = True
    interval_s: float = Field(default=300.0, ge=1)
    # Each run asks for studies from (watermark - lookback_days) on, so a study that
    # gains instances, or arrives, up to this many days behind the newest one seen is
    # still found; instances already ingested are skipped without being retrieved.
    lookback_days: int = Field(default=7, ge=0, le=3650)


class OrthancChanges(Doc):
    """Orthanc's REST change log (``GET /changes``), when the peer is an Orthanc: each
    run also looks at the studies that received instances since the previous run,
    whatever their StudyDate. ``url`` is Orthanc's REST root, e.g. http://pacs:8042."""

    url: str = Field(pattern=r"^https?://")
    auth: HttpAuth = Field(default_factory=HttpAuth)


class DicomWebSource(SourceBase):
    """Poll a DICOMweb server: QIDO-RS (PS3.18 10.6) for studies, paged; WADO-RS to
    retrieve each new study's instances."""

    type: Literal["dicomweb_poller"]
    url: str = Field(pattern=r"^https?://")
    auth: HttpAuth = Field(default_factory=HttpAuth)
    query: dict[str, str] = Field(default_factory=dict)  # QIDO parameters, e.g. {ModalitiesInStudy: CT}
    page_size: int = Field(default=100, ge=1, le=10000)
    timeout_s: float = Field(default=60.0, gt=0)
    orthanc_changes: OrthancChanges | None = None  # only when the server is an Orthanc


class DimseSource(SourceBase):
    """Poll a PACS by C-FIND (Study Root, STUDY then SERIES level) and retrieve by
    C-MOVE to one of our own listeners, or by C-GET (PS3.4 Annex C)."""

    type: Literal["dimse_poller"]
    ae_title: str = Field(max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae: str = Field(default="AXIOM", max_length=16)
    query: dict[str, str] = Field(default_factory=dict)  # C-FIND keys, e.g. {ModalitiesInStudy: CT}
    retrieve: Literal["move", "get"] = "move"
    move_destination: str | None = Field(default=None, max_length=16)  # our AE title known to the PACS
    timeout_s: float = Field(default=60.0, gt=0)
    tls: TLS | None = None
    orthanc_changes: OrthancChanges | None = None  # only when the PACS is an Orthanc


class HealthcareSource(HealthcareStore, SourceBase):
    """Poll a Healthcare API DICOM store by QIDO-RS and retrieve full instances."""

    type: Literal["healthcare"]
    query: dict[str, str] = Field(default_factory=dict)
    page_size: int = Field(default=100, ge=1, le=10000)
    timeout_s: float = Field(default=60.0, gt=0)


Source = Annotated[Union[DicomWebSource, DimseSource, HealthcareSource], Field(discriminator="type")]
