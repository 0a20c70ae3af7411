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
