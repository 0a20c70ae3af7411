"""Changing the config kept as documents (:func:`shared.config.to_documents`) in a
DocumentStore, SQLite or Firestore: read one document with its ETag, write one after
validating the WHOLE config it would make, export and import the whole config.

Lost races. Every write goes through ``DocumentStore.compare_and_set`` on two
documents: the one written, expected as it was read, and ``config_meta/revision``, a
token replaced by every config write (also :func:`replace_config`). So a write lands
only if no other write to ANY config document came in between: the config it was
validated as is the config that results. A lost race is retried from the start;
with ``If-Match`` a retry that finds the document itself changed is a
:class:`PreconditionFailed` (HTTP 412). The revision is also what the embedded
runtime watches to reload its config (``shared.runtime.configcache``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from shared.config.app import CONFIG_COLLECTIONS, LIST_COLLECTIONS, AppConfig
from shared.config.checks import reference_problems
from shared.config.loading import ConfigError, dump_yaml, parse_config, parse_yaml, to_documents

REVISION = ("config_meta", "revision")
# the config file ``serve --config`` last loaded (its digest): not a config collection,
# so an import or an API write leaves it as it is
FILE_SOURCE = ("config_file", "serve")
# the singletons' names in the API and CLI -> their document in collection "settings"
SINGLETONS = {"settings": "global", "default-route": "default_route", "stow": "stow"}
SETTINGS = "settings"
WRITE_ATTEMPTS = 5

Documents = dict[str, dict[str, dict[str, Any]]]


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The change cannot be made as things are (an id taken, a document still referenced)."""

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.details = details or []


class PreconditionFailed(Exception):
    """``If-Match`` named a version of the document that is no longer stored."""


def etag(doc: Any) -> str:
    """A strong ETag (RFC 9110 8.8.3) of a stored document: a hash of its canonical JSON."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def _matches(if_match: str | None, doc: Any) -> bool:
    if if_match is None:
        return True
    tags = [t.strip() for t in if_match.split(",")]
    if "*" in tags:
        return doc is not None
    # strong comparison (RFC 9110 13.1.1): a weak tag never matches; the quotes a
    # copy-paste loses are put back
    strong = {t if t.startswith('"') else f'"{t}"' for t in tags if t and not t.startswith("W/")}
    return doc is not None and etag(doc) in strong


def new_revision() -> dict[str, str]:
    return {"token": uuid.uuid4().hex}


def read_documents(docs) -> tuple[dict | None, Documents]:
    """The revision and then every config document. Read in this order, a write that
    lands in between changes the revision, so a compare-and-set against it fails."""
    revision = docs.get(*REVISION)
    return revision, {c: docs.list(c) for c in CONFIG_COLLECTIONS}


def config_data(documents: Documents) -> dict[str, Any]:
    """The AppConfig's input (lists and singletons) from its documents."""
    from shared.config.app import SETTINGS_DOCUMENTS

    settings = documents.get(SETTINGS, {})
    return {**{kind: list(documents.get(kind, {}).values()) for kind in LIST_COLLECTIONS},
            **{fld: settings.get(name, {}) for name, fld in SETTINGS_DOCUMENTS.items()}}


def replace_config(docs, config: AppConfig) -> None:
    """Replace every config document with ``config`` (serve's config file, an import,
    GCP's ``load_config``), with a new revision in the same write."""
    docs.replace_collections({**to_documents(config), REVISION[0]: {REVISION[1]: new_revision()}})


def config_digest(config: AppConfig) -> str:
    """sha256 of a config as resolved (``${VAR}`` substituted): what a file says."""
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def load_config_file(docs, config: AppConfig, *, name: str) -> tuple[str, str | None]:
    """``serve --config FILE`` at start, against the config already stored: the store
    keeps what the API and ``config import`` changed, unless the file itself changed
    since it was last loaded. Returns the outcome and, when the file replaced a stored
    config, that config as YAML (for the audit log):

    - ``"loaded"``: nothing was stored yet;
    - ``"kept"``: the file is as it was when last loaded (or a config was stored before
      any file was), so the stored config, with every change made since, stays;
    - ``"replaced"``: the file changed since it was last loaded, and replaced the
      stored config as an import would."""
    digest = config_digest(config)
    last = docs.get(*FILE_SOURCE)
    if docs.get(*REVISION) is None:
        outcome, before = "loaded", None
    elif last is None or last.get("sha256") == digest:
        docs.set(*FILE_SOURCE, {"name": name, "sha256": digest})
        return "kept", None
    else:
        outcome, before = "replaced", ConfigStore(docs).export_yaml()
    replace_config(docs, config)
    docs.set(*FILE_SOURCE, {"name": name, "sha256": digest})
    return outcome, before


def address(kind: str) -> tuple[str, str | None]:
    """(collection, fixed id) of an API kind: ``rulesets`` -> ("rulesets", None),
    ``default-route`` -> ("settings", "default_route"); NotFound for another."""
    if kind in LIST_COLLECTIONS:
        return kind, None
    if kind in SINGLETONS:
        return SETTINGS, SINGLETONS[kind]
    raise NotFound(f"no config kind {kind!r}: one of {', '.join(LIST_COLLECTIONS + tuple(SINGLETONS))}")


@dataclass
class Change:
    """One write's outcome: the document before and after (None: absent)."""

    collection: str
    doc_id: str
    before: dict | None
    after: dict | None
    config: AppConfig = field(repr=False, default=None)


class ConfigStore:
    """The config documents of one DocumentStore."""

    def __init__(self, docs):
        self.docs = docs

    def get(self, collection: str, doc_id: str) -> dict:
        doc = self.docs.get(collection, doc_id)
        if doc is None:
            if collection == SETTINGS:  # never written: the model's defaults
                return to_documents(AppConfig())[SETTINGS][doc_id]
            raise NotFound(f"no {collection} document {doc_id!r}")
        return doc

    def list(self, collection: str) -> dict[str, dict]:
        return self.docs.list(collection)

    def write(self, collection: str, doc_id: str, change: Callable[[dict | None], dict | None], *,
              if_match: str | None = None) -> Change:
        """Set the document to ``change(current)`` (None: delete it), after validating the
        whole config that results; ConfigError (every problem), NotFound, Conflict or
        PreconditionFailed otherwise. ``change`` may raise these too."""
        for _ in range(WRITE_ATTEMPTS):
            revision, documents = read_documents(self.docs)
            before = documents.get(collection, {}).get(doc_id)
            if not _matches(if_match, before):
                raise PreconditionFailed(f"{collection}/{doc_id} has changed since it was read (If-Match)")
            new = change(copy.deepcopy(before))
            if before is None and new is None:
                raise NotFound(f"no {collection} document {doc_id!r}")
            proposed = copy.deepcopy(documents)
            if new is None:
                proposed.get(collection, {}).pop(doc_id, None)
            else:
                proposed.setdefault(collection, {})[doc_id] = new
            data = config_data(proposed)
            if new is None:
                referenced = reference_problems(data)
                if referenced:
                    error = ConfigError.from_problems(referenced, data)
                    # where it is used (each would name it as unknown once it is gone)
                    raise Conflict(f"{collection}/{doc_id} is still referenced",
                                   [p["path"] for p in error.problems])
            config = parse_config(data)
            # stored canonical: aliases converted, defaults filled in (as a file would be)
            after = None if new is None else to_documents(config)[collection][doc_id]
            if after == before:  # nothing to change: no write, no new revision
                return Change(collection, doc_id, before, after, config)
            if self.docs.compare_and_set([(collection, doc_id, before, after), (*REVISION, revision, new_revision())]):
                return Change(collection, doc_id, before, after, config)
        raise Conflict("the config kept changing while this change was being made; try again")

    # --- the whole config -----------------------------------------------------------

    def config(self) -> AppConfig:
        return parse_config(config_data(read_documents(self.docs)[1]))

    def export_yaml(self) -> str:
        return dump_yaml(self.config())

    def import_yaml(self, text: str, *, dry_run: bool = False, name: str = "config") -> list[dict[str, Any]]:
        """Replace the whole config with a YAML one, validated as one unit (ConfigError
        listing every problem); returns the differences (:func:`diff`), written unless
        ``dry_run``."""
        config = parse_yaml(text, name, complete=True)
        changes = diff(read_documents(self.docs)[1], to_documents(config))
        if not dry_run and changes:
            replace_config(self.docs, config)
        return changes


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7386): objects merge
    key by key, ``null`` removes a key, anything else (arrays too) replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- differences -------------------------------------------------------------------------


def _field_changes(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                out.append({"path": sub, "before": before[key], "after": None})
            elif key not in before:
                out.append({"path": sub, "before": None, "after": after[key]})
            else:
                out += _field_changes(before[key], after[key], sub)
        return out
    keyed = (isinstance(before, list) and isinstance(after, list)
             and all(isinstance(i, dict) and isinstance(i.get("id"), str) for i in before + after))
    if keyed:  # rules within a ruleset: by id, so one changed rule is one entry
        return _field_changes({i["id"]: i for i in before}, {i["id"]: i for i in after}, path)
    return [] if before == after else [{"path": path, "before": before, "after": after}]


def diff(current: Documents, proposed: Documents) -> list[dict[str, Any]]:
    """What replacing ``current`` with ``proposed`` changes, one entry per document:
    ``{"op": "add"|"remove"|"change", "kind", "id", "fields": [{"path", "before", "after"}]}``."""
    out = []
    for collection in CONFIG_COLLECTIONS:
        old, new = current.get(collection, {}), proposed.get(collection, {})
        for doc_id in sorted(set(old) | set(new)):
            if doc_id not in new:
                out.append({"op": "remove", "kind": collection, "id": doc_id, "fields": []})
            elif doc_id not in old:
                out.append({"op": "add", "kind": collection, "id": doc_id, "fields": []})
            elif old[doc_id] != new[doc_id]:
                out.append({"op": "change", "kind": collection, "id": doc_id,
                            "fields": _field_changes(old[doc_id], new[doc_id])})
    return out


def diff_text(changes: list[dict[str, Any]]) -> str:
    """The differences as a person reads them: ``+`` added, ``-`` removed, ``~`` changed."""
    if not changes:
        return "no changes\n"
    lines = []
    for change in changes:
        mark = {"add": "+", "remove": "-", "change": "~"}[change["op"]]
        lines.append(f"{mark} {change['kind']}/{change['id']}")
        for f in change["fields"]:
            lines.append(f"    {f['path']}: {json.dumps(f['before'])} -> {json.dumps(f['after'])}")
    added = sum(c["op"] == "add" for c in changes)
    removed = sum(c["op"] == "remove" for c in changes)
    lines.append(f"{added} added, {sum(c['op'] == 'change' for c in changes)} changed, {removed} removed")
    return "\n".join(lines) + "\n"
