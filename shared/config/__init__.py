"""Configuration documents: listeners, destinations, rulesets, default route, settings.

Config is data: every document is a pydantic model, validated the same way whether
it comes from YAML, the SQLite store, Firestore or (later) the config API, so a bad
document is refused with a message that names the field.

One module per domain, each model beside the others of its kind:

- :mod:`~shared.config.base`: ``Doc`` and the field checks the documents share;
- :mod:`~shared.config.conditions`: rule conditions and schedules;
- :mod:`~shared.config.actions`: morph actions and crosswalk tables;
- :mod:`~shared.config.peers`: secrets, TLS, HTTP auth, Healthcare API stores;
- :mod:`~shared.config.destinations`, :mod:`~shared.config.sources` (inputs),
  :mod:`~shared.config.rulesets`, :mod:`~shared.config.settings`;
- :mod:`~shared.config.app`: ``AppConfig`` and its cross-reference checks;
- :mod:`~shared.config.loading`: YAML, documents, ``ConfigError``.

Callers import from here: ``from shared.config import AppConfig``.
"""

from shared.config.actions import (
    Action,
    AIStandardizeAction,
    CopyAction,
    CrosswalkAction,
    CrosswalkSync,
    CrosswalkTable,
    DeleteAction,
    MoveAction,
    PrependAction,
    RegexReplaceAction,
    SetAction,
    SuffixAction,
)
from shared.config.app import CONFIG_COLLECTIONS, AppConfig
from shared.config.base import Doc, TagAddress
from shared.config.conditions import (
    WEEKDAYS,
    AllOf,
    AnyOf,
    AssociationCondition,
    Condition,
    NotOf,
    Schedule,
    TagCondition,
)
from shared.config.destinations import (
    CStoreDestination,
    Destination,
    DicomWebDestination,
    FilesystemDestination,
    GCSDestination,
    HealthcareDestination,
    Retry,
)
from shared.config.loading import ConfigError, dump_yaml, expand_env, from_documents, load_yaml, parse_config, to_documents
from shared.config.peers import TLS, HealthcareStore, HttpAuth, SecretRef
from shared.config.rulesets import DefaultRoute, Rule, Ruleset, SourceScope
from shared.config.settings import DEFAULT_REQUIRED, Settings
from shared.config.sources import (
    DicomWebSource,
    DimseSource,
    HealthcareSource,
    Listener,
    OrthancChanges,
    Source,
    StowInput,
)
from shared.config.spanner import Spanner, SpannerSource

__all__ = [
    "Action", "AIStandardizeAction", "CopyAction", "CrosswalkAction", "CrosswalkSync", "CrosswalkTable", "DeleteAction",
    "MoveAction", "PrependAction", "RegexReplaceAction", "SetAction", "SuffixAction",
    "CONFIG_COLLECTIONS", "AppConfig",
    "Doc", "TagAddress",
    "WEEKDAYS", "AllOf", "AnyOf", "AssociationCondition", "Condition", "NotOf", "Schedule", "TagCondition",
    "CStoreDestination", "Destination", "DicomWebDestination", "FilesystemDestination", "GCSDestination",
    "HealthcareDestination", "Retry",
    "ConfigError", "dump_yaml", "expand_env", "from_documents", "load_yaml", "parse_config", "to_documents",
    "TLS", "HealthcareStore", "HttpAuth", "SecretRef",
    "DefaultRoute", "Rule", "Ruleset", "SourceScope", "Spanner", "SpannerSource",
    "DEFAULT_REQUIRED", "Settings",
    "DicomWebSource", "DimseSource", "HealthcareSource", "Listener", "OrthancChanges", "Source", "StowInput",
]
