"""Inputs: DICOM listeners, the STOW-RS endpoint, and the pollers' sources (one model
per ``type``, polled by :mod:`shared.inputs.pollers`)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, StringConstraints

from shared.config.base import Doc, IPNetwork
from shared.config.peers import TLS, HealthcareStore, HttpAuth, SecretRef

AETitle = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]


class Listener(Doc):
    """A DICOM listener: an Application Entity that accepts associations and C-STORE
    (PS3.4 Annex B, Storage Service Class) and C-ECHO (PS3.7 section 9.1.5). An
    association is refused with an A-ASSOCIATE-RJ (PS3.8 9.3.4) when its source address
    is outside ``allowed_sources``, its called AE title is not in ``called_ae_titles`` or
    its calling AE title is not in ``calling_ae_titles``; a list left unset checks
    nothing, so any called AE title is accepted, ``ae_title`` or not."""

    id: str = Field(examples=["main"], description="Unique id of the listener; rules can test it as `source_id`.")
    ae_title: str = Field(default="AXIOM", max_length=16, examples=["AXIOM"],
                          description="The AE title this listener answers to (at most 16 characters).")
    host: str = Field(default="0.0.0.0", examples=["0.0.0.0", "10.0.0.7"],
                      description="Address to listen on; `0.0.0.0` is every IPv4 interface.")
    port: int = Field(default=11112, ge=0, le=65535,
                      description="TCP port to listen on; 0 lets the system pick a free one.")
    max_pdu: int = Field(default=131072, ge=0,
                         description="Largest PDU we receive, in bytes, as offered to the peer; 0 offers no maximum.")
    tls: TLS | None = Field(default=None, description="Accept TLS associations only; none: plain TCP.")
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
    spanner: str | None = Field(
        default=None, examples=["enterprise"],
        description="Also answer C-FIND (Study Root) from this spanner's sources, merged: legacy DIMSE clients "
                    "query the spanned view; none: C-FIND is not offered.")
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

    enabled: bool = Field(default=True, description="Accept STOW-RS requests; false answers 404.")
    id: str = Field(default="stow", description="The source id that instances received here carry (`source_id`).")
    api_keys: SecretRef | None = Field(
        default=None, examples=["env:AXIOM_STOW_KEYS"],
        description="Deprecated: a secret with further accepted keys, one a line; none: only users' API keys.")
    max_request_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1024,
                                   description="Largest request body accepted, in bytes; larger ones get 413.")


class SourceBase(Doc):
    id: str = Field(examples=["pacs-ct"], description="Unique id of the source; rules can test it as `source_id`.")
    enabled: bool = Field(default=True, description="Poll this source; false stops polling.")
    interval_s: float = Field(default=300.0, ge=1, description="Seconds between two polls.")
    lookback_days: int = Field(
        default=7, ge=0, le=3650,
        description="Each poll asks for studies from this many days before the newest study date seen, so "
                    "instances that arrive late in recent studies are still found (those already received "
                    "are skipped without being retrieved).")


class OrthancChanges(Doc):
    """Orthanc's REST change log (``GET /changes``), when the peer is an Orthanc: each
    run also looks at the studies that received instances since the previous run,
    whatever their StudyDate. ``url`` is Orthanc's REST root, e.g. http://pacs:8042."""

    url: str = Field(pattern=r"^https?://", examples=["http://pacs:8042"], description="Orthanc's REST root.")
    auth: HttpAuth = Field(default_factory=HttpAuth, description="How to authenticate to Orthanc's REST API.")


class DicomWebSource(SourceBase):
    """Poll a DICOMweb server: QIDO-RS (PS3.18 10.6) for studies, paged; WADO-RS to
    retrieve each new study's instances."""

    type: Literal["dicomweb_poller"] = Field(description="Selects this kind of source.")
    url: str = Field(pattern=r"^https?://", examples=["https://pacs.example.org/dicom-web"],
                     description="The DICOMweb service base URL (studies are under `{url}/studies`).")
    auth: HttpAuth = Field(default_factory=HttpAuth, description="How to authenticate to the server.")
    query: dict[str, str] = Field(default_factory=dict, examples=[{"ModalitiesInStudy": "CT"}],
                                  description="Further QIDO-RS query parameters of every study query.")
    page_size: int = Field(default=100, ge=1, le=10000,
                           description="Studies asked for per QIDO-RS request (`limit`).")
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for each HTTP response.")
    orthanc_changes: OrthancChanges | None = Field(
        default=None, description="Only when the server is an Orthanc: also follow its change log.")


class DimseSource(SourceBase):
    """Poll a PACS by C-FIND (Study Root, STUDY then SERIES level) and retrieve by
    C-MOVE to one of our own listeners, or by C-GET (PS3.4 Annex C)."""

    type: Literal["dimse_poller"] = Field(description="Selects this kind of source.")
    ae_title: str = Field(max_length=16, examples=["PACS"], description="The PACS's AE title (called AE).")
    host: str = Field(examples=["10.0.0.5"], description="Host name or IP address of the PACS.")
    port: int = Field(ge=1, le=65535, examples=[104], description="TCP port of the PACS.")
    calling_ae: str = Field(default="AXIOM", max_length=16, description="Our AE title in the association.")
    query: dict[str, str] = Field(default_factory=dict, examples=[{"ModalitiesInStudy": "CT"}],
                                  description="Further C-FIND keys (keyword: value) of every study query.")
    retrieve: Literal["move", "get"] = Field(
        default="move", description="How instances are retrieved: `move` (C-MOVE to `move_destination`) or "
                                    "`get` (C-GET on the same association).")
    move_destination: str | None = Field(
        default=None, max_length=16, examples=["AXIOM"],
        description="For `move`: the AE title of one of our listeners, as the PACS knows it.")
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for each DIMSE response.")
    tls: TLS | None = Field(default=None, description="Connect with TLS; none: plain TCP.")
    orthanc_changes: OrthancChanges | None = Field(
        default=None, description="Only when the PACS is an Orthanc: also follow its change log.")


class HealthcareSource(HealthcareStore, SourceBase):
    """Poll a Healthcare API DICOM store by QIDO-RS and retrieve full instances."""

    type: Literal["healthcare"] = Field(description="Selects this kind of source.")
    query: dict[str, str] = Field(default_factory=dict, examples=[{"ModalitiesInStudy": "MR"}],
                                  description="Further QIDO-RS query parameters of every study query.")
    page_size: int = Field(default=100, ge=1, le=10000,
                           description="Studies asked for per QIDO-RS request (`limit`).")
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for each HTTP response.")


Source = Annotated[Union[DicomWebSource, DimseSource, HealthcareSource], Field(discriminator="type")]
