"""Reading and writing config: YAML files (with ``${VAR}`` expansion) and the
per-collection documents kept in SQLite or Firestore; :class:`ConfigError` for a
document that does not validate."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.config.app import LIST_COLLECTIONS, SETTINGS_DOCUMENTS, AppConfig
from shared.config.checks import readable, reference_problems, unusable


class ConfigError(ValueError):
    """A config that does not validate. ``errors`` has one line per bad field
    (``path: message``), ``problems`` the same as ``{"loc", "path", "msg"}``, where
    ``loc`` is pydantic's location in the config and ``path`` names list items by id."""

    def __init__(self, errors: list[str], problems: list[dict[str, Any]] | None = None):
        self.errors = errors
        self.problems = problems if problems is not None else [{"loc": [], "path": "", "msg": e} for e in errors]
        super().__init__("invalid config: " + "; ".join(errors))

    @classmethod
    def from_problems(cls, problems: list[tuple[tuple, str]], data: Any, prefix: str = "", *,
                      field_errors: list[tuple[tuple, str]] = ()) -> "ConfigError":
        """``field_errors`` (pydantic's) are worded with their dotted location
        (``rulesets.0.rules.1.when``), the cross-document ``problems`` by id
        (``rulesets[main].rules[r1].destinations[0]``); both have ``path`` by id."""
        found, lines = [], []
        for dotted, group in ((True, field_errors), (False, problems)):
            for loc, msg in group:
                path = prefix + readable(loc, data)
                found.append({"loc": list(loc), "path": path, "msg": msg})
                where = (prefix + "." if prefix and loc else prefix) + ".".join(map(str, loc)) if dotted else path
                lines.append(f"{where}: {msg}" if where else msg)
        return cls(lines, found)

    @classmethod
    def from_validation(cls, exc: ValidationError, data: Any = None, prefix: str = "") -> "ConfigError":
        return cls.from_problems([], data, prefix, field_errors=[(tuple(e["loc"]), field_message(e)) for e in exc.errors()])


def field_message(error: dict[str, Any]) -> str:
    """pydantic's message for one field, without the "Value error, " it puts before our
    validators' own words."""
    return error["msg"].removeprefix("Value error, ")


def parse_config(data: dict[str, Any], *, complete: bool = False) -> AppConfig:
    """``data`` as an AppConfig, or ConfigError listing every problem at once: the
    fields of each document and the references between them (which pydantic alone
    reports only once every field is valid). ``complete``: also refuse a config no
    runtime could use (:func:`shared.config.checks.unusable`), e.g. an empty one."""
    data = data or {}
    try:
        config = AppConfig.model_validate(data)
    except ValidationError as exc:
        # the model-wide check (loc ()) ran only if every field was valid; run it on
        # the data instead, so references are reported beside the field errors
        fields = [(tuple(e["loc"]), field_message(e)) for e in exc.errors() if e["loc"] or not isinstance(data, dict)]
        raise ConfigError.from_problems(reference_problems(data), data, field_errors=fields) from None
    if complete:
        missing = unusable(config.model_dump(mode="json", by_alias=True))
        if missing:
            raise ConfigError.from_problems(missing, data)
    return config


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


def load_yaml(path: str | Path, *, complete: bool = False) -> AppConfig:
    return parse_yaml(Path(path).read_text(), str(path), complete=complete)


def parse_yaml(text: str, name: str = "config", *, complete: bool = False) -> AppConfig:
    """A YAML config (``${VAR}`` expanded); ConfigError naming every problem."""
    try:
        data = yaml.safe_load(expand_env(text))
    except yaml.YAMLError as exc:  # one line: where, and what is wrong there
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{name}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"{name}: a config is a mapping of sections (listeners, destinations, ...)"])
    return parse_config(data, complete=complete)


def dump_yaml(config: AppConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_defaults=True), sort_keys=False)


# --- config as documents -------------------------------------------------------------
# Each list item is one document in its collection; settings and the default route
# are singletons in "settings". The same layout serves SQLite and Firestore.


def to_documents(config: AppConfig) -> dict[str, dict[str, dict]]:
    data = config.model_dump(mode="json", by_alias=True)
    docs: dict[str, dict[str, dict]] = {
        kind: {item["id"]: item for item in data[kind]} for kind in LIST_COLLECTIONS
    }
    docs["settings"] = {name: data[field] for name, field in SETTINGS_DOCUMENTS.items()}
    return docs


def from_documents(docs: dict[str, dict[str, dict]]) -> AppConfig:
    settings = docs.get("settings", {})
    return parse_config(
        {
            **{kind: list(docs.get(kind, {}).values()) for kind in LIST_COLLECTIONS},
            **{field: settings.get(name, {}) for name, field in SETTINGS_DOCUMENTS.items()},
        }
    )
