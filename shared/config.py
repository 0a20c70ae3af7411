"""Configuration documents: listeners, destinations, rulesets, default route, settings.

Config is data: every document is a pydantic model, validated the same way whether
it comes from YAML, the SQLite store, Firestore or (later) the config API, so a bad
document is refused with a message that names the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from shared.dicom.tags import TagAddressError, parse_tag


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- conditions -------------------------------------------------------------------


class TagCondition(Doc):
    tag: str
    op: Literal["eq", "ne", "exists", "not_exists"] = "eq"
    value: str | None = None

    @field_validator("tag")
    @classmethod
    def _known_tag(cls, v: str) -> str:
        try:
            parse_tag(v)
        except TagAddressError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _value_needed(self):
        if self.op in ("eq", "ne") and self.value is None:
            raise ValueError(f"operator {self.op!r} needs a value")
        return self


class AssociationCondition(Doc):
    association: Literal["calling_ae", "called_ae", "peer_ip", "source_type", "source_id"]
    op: Literal["eq", "ne"] = "eq"
    value: str


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


# --- actions ----------------------------------------------------------------------


class SetAction(Doc):
    action: Literal["set"]
    tag: str
    value: str
    vr: str | None = None

    _tag = field_validator("tag")(TagCondition._known_tag.__func__)


class DeleteAction(Doc):
    action: Literal["delete"]
    tag: str

    _tag = field_validator("tag")(TagCondition._known_tag.__func__)


Action = Annotated[Union[SetAction, DeleteAction], Field(discriminator="action")]


# --- rules ------------------------------------------------------------------------


class Rule(Doc):
    id: str
    enabled: bool = True
    when: Condition | None = None  # None: every instance
    actions: list[Action] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)


class Ruleset(Doc):
    id: str
    enabled: bool = True
    priority: int = 100  # lower runs first
    mode: Literal["FIRST_MATCH", "ALL_MATCHES"] = "ALL_MATCHES"
    rules: list[Rule] = Field(default_factory=list)


class DefaultRoute(Doc):
    """What happens to an instance no rule matches: sent to these destinations, or,
    with none, held with an exception record. Never a silent drop."""

    destinations: list[str] = Field(default_factory=list)


# --- destinations -----------------------------------------------------------------


class Retry(Doc):
    max_attempts: int = Field(default=5, ge=1, le=100)
    initial_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=300.0, gt=0)


class DestinationBase(Doc):
    id: str
    enabled: bool = True
    retry: Retry = Field(default_factory=Retry)


class FilesystemDestination(DestinationBase):
    type: Literal["filesystem"]
    path: str  # relative paths are taken relative to the data dir
    name_template: str = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"


class CStoreDestination(DestinationBase):
    type: Literal["cstore"]
    ae_title: str = Field(max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae: str = Field(default="AXIOM", max_length=16)
    max_pdu: int = Field(default=131072, ge=0)
    timeout_s: float = Field(default=30.0, gt=0)


Destination = Annotated[Union[FilesystemDestination, CStoreDestination], Field(discriminator="type")]


# --- inputs and settings ------------------------------------------------------------


class Listener(Doc):
    id: str
    ae_title: str = Field(default="AXIOM", max_length=16)
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    max_pdu: int = Field(default=131072, ge=0)


class Settings(Doc):
    ingest_bucket: str = "ingest"
    processed_bucket: str = "processed"
    quarantine_bucket: str = "quarantine"
    stage_max_attempts: int = Field(default=5, ge=1)


class AppConfig(Doc):
    settings: Settings = Field(default_factory=Settings)
    listeners: list[Listener] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    rulesets: list[Ruleset] = Field(default_factory=list)
    default_route: DefaultRoute = Field(default_factory=DefaultRoute)

    @model_validator(mode="after")
    def _references(self):
        for kind in ("listeners", "destinations", "rulesets"):
            ids = [item.id for item in getattr(self, kind)]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate id(s) {dupes}")
        known = {d.id for d in self.destinations}
        for rs in self.rulesets:
            for rule in rs.rules:
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

    def active_rulesets(self) -> list[Ruleset]:
        return sorted((rs for rs in self.rulesets if rs.enabled), key=lambda rs: (rs.priority, rs.id))


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
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data)


def dump_yaml(config: AppConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_defaults=True), sort_keys=False)


# --- config as documents -------------------------------------------------------------
# Each list item is one document in its collection; settings and the default route
# are singletons in "settings". The same layout serves SQLite and Firestore.

_LISTS = ("listeners", "destinations", "rulesets")


def to_documents(config: AppConfig) -> dict[str, dict[str, dict]]:
    data = config.model_dump(mode="json", by_alias=True)
    docs: dict[str, dict[str, dict]] = {
        kind: {item["id"]: item for item in data[kind]} for kind in _LISTS
    }
    docs["settings"] = {"global": data["settings"], "default_route": data["default_route"]}
    return docs


def from_documents(docs: dict[str, dict[str, dict]]) -> AppConfig:
    settings = docs.get("settings", {})
    return parse_config(
        {
            **{kind: list(docs.get(kind, {}).values()) for kind in _LISTS},
            "settings": settings.get("global", {}),
            "default_route": settings.get("default_route", {}),
        }
    )
