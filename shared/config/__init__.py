"""Configuration documents: listeners, destinations, rulesets, default route, settings.

Config is data: every document is a pydantic model, validated the same way whether
it comes from YAML, the SQLite store, Firestore or (later) the config API, so a bad
document is refused with a message that names the field.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydicom.valuerep import VR as _VR

from shared.dicom.tags import TagAddressError, parse_path
from shared.dicom.values import check_comparable, check_value_for_vr
from shared.messages import SourceType
from shared.regex import compile_regex
from shared.templates import check_name_template, check_template, has_fields

_VR_NAMES = frozenset(str(vr) for vr in _VR)


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- tag addresses ------------------------------------------------------------------


def _check_path(value: str) -> str:
    try:
        parse_path(value)
    except TagAddressError as exc:
        raise ValueError(str(exc)) from None
    return value


TagAddress = Annotated[str, AfterValidator(_check_path)]


def _check_target(value: str) -> str:
    """Actions never touch file meta (group 0002) or pixel data (group 7FE0)."""
    for step in parse_path(value).steps:
        if step.tag is not None and (step.tag >> 16) in (0x0002, 0x7FE0):
            raise ValueError(f"{value!r}: group {step.tag >> 16:04X} (file meta / pixel data) cannot be changed by actions")
    return value


ActionTagAddress = Annotated[str, AfterValidator(_check_path), AfterValidator(_check_target)]


def _check_value_any_vr(vr: str | None, text: str) -> None:
    """check_value_for_vr, where a dictionary VR such as ``US or SS`` accepts a value
    valid for any one of its VRs."""
    options = vr.split(" or ") if vr else [vr]
    errors = []
    for option in options:
        try:
            return check_value_for_vr(option, text)
        except ValueError as exc:
            errors.append(exc)
    raise errors[0]


def _check_vr(value: str | None) -> str | None:
    if value is not None and value not in _VR_NAMES:
        raise ValueError(f"unknown VR {value!r}")
    return value


VRName = Annotated[str | None, AfterValidator(_check_vr)]


def _check_regex(pattern: str) -> str:
    """Patterns are compiled by RE2 (linear time, no catastrophic backtracking), so a
    hostile pattern in config cannot stall a worker; what RE2 refuses is refused here."""
    try:
        compile_regex(pattern)
    except ValueError as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Regex = Annotated[str, AfterValidator(_check_regex)]

# --- conditions -------------------------------------------------------------------

TagOp = Literal[
    "eq", "ne", "gt", "ge", "lt", "le", "exists", "not_exists", "contains", "not_contains",
    "startswith", "endswith", "regex", "in", "not_in",
]
Scalar = Union[str, int, float]


class TagCondition(Doc):
    """A condition on an attribute. Numbers compare as numbers (by VR), DA/TM/DT as
    dates/times. A multi-valued element matches if any value matches, or every value
    with ``match: all``. ``ne``/``not_*`` are the negation of their positive operator."""

    tag: TagAddress
    op: TagOp = "eq"
    value: Scalar | list[Scalar] | None = None
    case_insensitive: bool = False
    match: Literal["any", "all"] = "any"

    @model_validator(mode="after")
    def _value_fits_op(self):
        if self.op in ("exists", "not_exists"):
            if self.value is not None:
                raise ValueError(f"operator {self.op!r} takes no value")
            return self
        if self.value is None:
            raise ValueError(f"operator {self.op!r} needs a value")
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"operator {self.op!r} needs a non-empty list of values")
        elif isinstance(self.value, list):
            raise ValueError(f"operator {self.op!r} takes one value, not a list")
        if self.op == "regex":
            _check_regex(str(self.value))
        if self.op in ("gt", "ge", "lt", "le"):
            vr = parse_path(self.tag).dictionary_vr()
            check_comparable(vr, self.value)
        return self


AssociationField = Literal["calling_ae", "called_ae", "source_ip", "source_type", "source_id"]


class AssociationCondition(Doc):
    """A condition on how the instance arrived. For ``source_ip``, ``eq``/``in`` test
    membership of CIDR networks (IPv4 or IPv6; a bare address is a /32 or /128)."""

    association: AssociationField
    op: Literal["eq", "ne", "in", "not_in", "startswith", "regex"] = "eq"
    value: str | list[str]
    case_insensitive: bool = False

    @model_validator(mode="after")
    def _value_fits_op(self):
        if self.op in ("in", "not_in") and (not isinstance(self.value, list) or not self.value):
            raise ValueError(f"operator {self.op!r} needs a non-empty list of values")
        if self.op not in ("in", "not_in") and isinstance(self.value, list):
            raise ValueError(f"operator {self.op!r} takes one value, not a list")
        if self.op == "regex":
            _check_regex(self.value)
        if self.association == "source_ip":
            if self.op not in ("eq", "ne", "in", "not_in"):
                raise ValueError("source_ip takes eq, ne, in or not_in with CIDR networks")
            for net in self.value if isinstance(self.value, list) else [self.value]:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError as exc:
                    raise ValueError(f"not an IP network: {net!r} ({exc})") from None
        return self


class AllOf(Doc):
    all: list["Condition"] = Field(min_length=1)


class AnyOf(Doc):
    any: list["Condition"] = Field(min_length=1)


class NotOf(Doc):
    not_: "Condition" = Field(alias="not")


_CONDITION_KEYS = {"tag": TagCondition, "association": AssociationCondition, "all": AllOf, "any": AnyOf, "not": NotOf}


def _condition_kind(value: Any) -> str | None:
    """Pick the condition model by its leading key, so errors name one model only."""
    if isinstance(value, dict):
        return next((key for key in _CONDITION_KEYS if key in value), None)
    return next((key for key, model in _CONDITION_KEYS.items() if isinstance(value, model)), None)


Condition = Annotated[
    Union[tuple(Annotated[model, Tag(key)] for key, model in _CONDITION_KEYS.items())],
    Discriminator(
        _condition_kind,
        custom_error_type="condition_kind",
        custom_error_message="a condition needs one of the keys tag, association, all, any, not",
    ),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


# --- schedules ----------------------------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Schedule(Doc):
    """A reusable time window. ``start`` > ``end`` is an overnight window: it opens on
    the listed day and closes the next morning. Times are local to ``timezone`` (IANA),
    so DST changes are followed. ``date_from``/``date_to`` (inclusive) bound the local
    date on which a window opens."""

    id: str
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    start: time = time(0, 0)
    end: time = time(0, 0)  # start == end: the whole day
    timezone: str = "UTC"
    date_from: date | None = None
    date_to: date | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _dates_in_order(self):
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")
        return self


# --- actions ----------------------------------------------------------------------
# Values may be templates built from other tags: "{PatientID}-{AccessionNumber}",
# with "|upper" or "|lower": "{PatientName|upper}". "{{" and "}}" are literal braces.


class _TagAction(Doc):
    tag: ActionTagAddress


class SetAction(_TagAction):
    """Set the element, creating it (and sequences/items on its path) if missing."""

    action: Literal["set"]
    value: str
    vr: VRName = None

    @model_validator(mode="after")
    def _value_valid_for_vr(self):
        check_template(self.value)
        if not has_fields(self.value):
            _check_value_any_vr(self.vr or parse_path(self.tag).dictionary_vr(), self.value)
        return self


class DeleteAction(Doc):
    """Delete an element (every item's element with [*]), or a whole ``group``:
    ``private`` for every private element, or a 4-hex-digit group such as ``6000``."""

    action: Literal["delete"]
    tag: ActionTagAddress | None = None
    group: str | None = None

    @model_validator(mode="after")
    def _one_target(self):
        if (self.tag is None) == (self.group is None):
            raise ValueError("delete needs exactly one of tag or group")
        if self.group is not None and self.group != "private" and not re.fullmatch(r"[0-9A-Fa-f]{4}", self.group):
            raise ValueError("group must be 'private' or four hex digits such as '6000'")
        if self.group is not None and self.group.upper() in ("0002", "7FE0"):
            raise ValueError(f"group {self.group} cannot be deleted (file meta / pixel data)")
        return self


class PrependAction(_TagAction):
    action: Literal["prepend"]
    value: str

    _template = field_validator("value")(lambda cls, v: check_template(v))


class SuffixAction(_TagAction):
    action: Literal["suffix"]
    value: str

    _template = field_validator("value")(lambda cls, v: check_template(v))


class RegexReplaceAction(_TagAction):
    """RE2 substitution; the replacement may use \\1 or \\g<name> group references."""

    action: Literal["regex_replace"]
    pattern: Regex
    replacement: str
    count: int = Field(default=0, ge=0)  # 0: every match

    @model_validator(mode="after")
    def _groups_exist(self):
        regex = compile_regex(self.pattern)
        for m in re.finditer(r"\\(\d+)|\\g<([^>]*)>", self.replacement):
            ref = m.group(1) or m.group(2)
            if ref.isdigit():
                if int(ref) > regex.groups:
                    raise ValueError(f"replacement refers to group {ref}; the pattern has {regex.groups} group(s)")
            elif ref not in regex.groupindex:
                raise ValueError(f"replacement refers to group {ref!r}, which the pattern does not name")
        return self


class CopyAction(Doc):
    action: Literal["copy"]
    from_: ActionTagAddress = Field(alias="from")
    to: ActionTagAddress
    vr: VRName = None


class MoveAction(Doc):
    """Copy, then delete the source."""

    action: Literal["move"]
    from_: ActionTagAddress = Field(alias="from")
    to: ActionTagAddress
    vr: VRName = None


class CrosswalkAction(_TagAction):
    """Look the element's value up in a crosswalk table and write the result to ``to``
    (default: the same element)."""

    action: Literal["crosswalk"]
    table: str
    to: ActionTagAddress | None = None
    on_missing: Literal["keep", "error", "default"] = "keep"
    default: str | None = None

    @model_validator(mode="after")
    def _default_given(self):
        if self.on_missing == "default" and self.default is None:
            raise ValueError("on_missing 'default' needs a default value")
        if self.default is not None:
            _check_value_any_vr(parse_path(self.to or self.tag).dictionary_vr(), self.default)
        return self


class AIStandardizeAction(_TagAction):
    """Standardize a free-text value (e.g. a series description) with the configured
    AI standardizer, optionally constrained to ``allowed`` values."""

    action: Literal["ai_standardize"]
    kind: str = "free_text"
    to: ActionTagAddress | None = None
    allowed: list[str] | None = None
    instructions: str | None = None


Action = Annotated[
    Union[SetAction, DeleteAction, PrependAction, SuffixAction, RegexReplaceAction, CopyAction,
          MoveAction, CrosswalkAction, AIStandardizeAction],
    Field(discriminator="action"),
]


# --- rules ------------------------------------------------------------------------


class SourceScope(Doc):
    """Limit a ruleset to one input: a source type, optionally one source id."""

    type: SourceType
    id: str | None = None


class Rule(Doc):
    id: str
    enabled: bool = True
    when: Condition | None = None  # None: every instance
    schedule: str | None = None  # id of a Schedule; None: always active when enabled
    actions: list[Action] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)


class Ruleset(Doc):
    id: str
    enabled: bool = True
    priority: int = 100  # lower runs first
    mode: Literal["FIRST_MATCH", "ALL_MATCHES"] = "ALL_MATCHES"
    sources: list[SourceScope] = Field(default_factory=list)  # empty: every input
    log_original_attributes: bool | None = None  # None: settings.log_original_attributes
    rules: list[Rule] = Field(default_factory=list)


class DefaultRoute(Doc):
    """What happens to an instance no rule matches: sent to these destinations, or,
    with none, held with an exception record. Never a silent drop."""

    destinations: list[str] = Field(default_factory=list)


class CrosswalkTable(Doc):
    """An in-memory crosswalk: exact keys to values (external databases come later)."""

    id: str
    entries: dict[str, str] = Field(default_factory=dict)
    case_insensitive: bool = False


# --- destinations -----------------------------------------------------------------


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


# Secrets are named, never written into config: "env:NAME" (an environment variable),
# "file:/path", or "gsm:projects/P/secrets/S/versions/V" (Secret Manager). See shared/secrets.py.
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


# --- inputs and settings ------------------------------------------------------------


class Listener(Doc):
    id: str
    ae_title: str = Field(default="AXIOM", max_length=16)
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    max_pdu: int = Field(default=131072, ge=0)
    tls: TLS | None = None


class StowInput(Doc):
    """The STOW-RS endpoint (PS3.18 section 10.5) of ``axiom-flow serve`` and the
    ``stow`` function. Clients send an API key in the X-API-Key header (or as a Bearer
    token); the keys come from a secret holding one key per line."""

    enabled: bool = True
    id: str = "stow"
    api_keys: SecretRef | None = None  # None: STOW-RS refuses every request
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


DEFAULT_REQUIRED = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"]


class Settings(Doc):
    required_attributes: list[TagAddress] = Field(default_factory=lambda: list(DEFAULT_REQUIRED))
    log_original_attributes: bool = False
    modifying_system: str = Field(default="AXIOM FLOW", max_length=64)
    ingest_bucket: str = "ingest"
    processed_bucket: str = "processed"
    quarantine_bucket: str = "quarantine"
    stage_max_attempts: int = Field(default=5, ge=1)
    # below this much free space where the gateway receives (the data dir), it refuses
    # associations and C-STOREs (0xA700) so what it accepted can still be processed; 0: never
    min_free_bytes: int = Field(default=1 << 30, ge=0)


class AppConfig(Doc):
    settings: Settings = Field(default_factory=Settings)
    listeners: list[Listener] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    rulesets: list[Ruleset] = Field(default_factory=list)
    schedules: list[Schedule] = Field(default_factory=list)
    crosswalks: list[CrosswalkTable] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    stow: StowInput = Field(default_factory=StowInput)
    default_route: DefaultRoute = Field(default_factory=DefaultRoute)

    @model_validator(mode="after")
    def _references(self):
        for kind in _LISTS:
            ids = [item.id for item in getattr(self, kind)]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate id(s) {dupes}")
        known = {d.id for d in self.destinations}
        schedules = {s.id for s in self.schedules}
        tables = {t.id for t in self.crosswalks}
        for rs in self.rulesets:
            for rule in rs.rules:
                where = f"rulesets[{rs.id}].rules[{rule.id}]"
                if rule.schedule is not None and rule.schedule not in schedules:
                    raise ValueError(f"{where}.schedule: unknown schedule {rule.schedule!r}")
                for n, action in enumerate(rule.actions):
                    if isinstance(action, CrosswalkAction) and action.table not in tables:
                        raise ValueError(f"{where}.actions[{n}].table: unknown crosswalk table {action.table!r}")
                for dest in rule.destinations:
                    if dest not in known:
                        raise ValueError(
                            f"rulesets[{rs.id}].rules[{rule.id}].destinations: unknown destination {dest!r}"
                        )
        for dest in self.default_route.destinations:
            if dest not in known:
                raise ValueError(f"default_route.destinations: unknown destination {dest!r}")
        return self

    def destination(self, destination_id: str):
        for d in self.destinations:
            if d.id == destination_id:
                return d
        raise KeyError(destination_id)

    def why_not_deliverable(self, destination_id: str) -> str | None:
        """Why a delivery to ``destination_id`` must wait (the reason of its held
        record), or None when the destination is configured and enabled."""
        try:
            dest = self.destination(destination_id)
        except KeyError:
            return f"destination {destination_id} is not configured"
        return None if dest.enabled else f"destination {destination_id} is disabled"

    def active_rulesets(self) -> list[Ruleset]:
        return sorted((rs for rs in self.rulesets if rs.enabled), key=lambda rs: (rs.priority, rs.id))


_LISTS = ("listeners", "destinations", "rulesets", "schedules", "crosswalks", "sources")
_SINGLETONS = {"global": "settings", "default_route": "default_route", "stow": "stow"}  # documents in "settings"
CONFIG_COLLECTIONS = ("settings", *_LISTS)


class ConfigError(ValueError):
    """A config document that does not validate. ``str()`` names each bad field."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid config: " + "; ".join(errors))

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: str = "") -> "ConfigError":
        msgs = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msgs.append(f"{prefix}{loc}: {err['msg']}" if loc or prefix else err["msg"])
        return cls(msgs)


def parse_config(data: dict[str, Any]) -> AppConfig:
    try:
        return AppConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError.from_validation(exc) from None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset variable without a
    default is an error rather than an empty string."""
    env = os.environ if env is None else env

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError([f"environment variable {name} is not set and has no default"])

    return _ENV.sub(sub, text)


def load_yaml(path: str | Path) -> AppConfig:
    text = expand_env(Path(path).read_text())
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # one line: where, and what is wrong there
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    return parse_config(data)


def dump_yaml(config: AppConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_defaults=True), sort_keys=False)


# --- config as documents -------------------------------------------------------------
# Each list item is one document in its collection; settings and the default route
# are singletons in "settings". The same layout serves SQLite and Firestore.



def to_documents(config: AppConfig) -> dict[str, dict[str, dict]]:
    data = config.model_dump(mode="json", by_alias=True)
    docs: dict[str, dict[str, dict]] = {
        kind: {item["id"]: item for item in data[kind]} for kind in _LISTS
    }
    docs["settings"] = {name: data[field] for name, field in _SINGLETONS.items()}
    return docs


def from_documents(docs: dict[str, dict[str, dict]]) -> AppConfig:
    settings = docs.get("settings", {})
    return parse_config(
        {
            **{kind: list(docs.get(kind, {}).values()) for kind in _LISTS},
            **{field: settings.get(name, {}) for name, field in _SINGLETONS.items()},
        }
    )
