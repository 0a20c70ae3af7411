"""Services the ``crosswalk`` and ``ai_standardize`` actions get their values from.

The crosswalk stage (:func:`shared.stages.crosswalk`) runs a plan's actions with live
services and records every answer (:class:`MorphServices` with ``record=True``); morph
runs them again over those answers only (``resolved``), so it calls no database or
model and a re-run writes the same bytes. Both are Protocols:

- :class:`InMemoryCrosswalk` serves the in-memory ``crosswalks`` tables of the config
  (:class:`shared.adapters.crosswalk_databases.DatabaseCrosswalk` serves those read from databases too);
- :class:`FakeStandardizer` is deterministic (whitespace and case normalization, closest
  allowed value by :mod:`difflib`) and caches its answers, as the Vertex AI one
  (:mod:`shared.vertex_standardizer`) does.

Values passed to these services are often PHI (a Patient ID is a crosswalk key):
implementations must never log them or put them into exception messages.
"""

from __future__ import annotations

import difflib
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

from shared.errors import CrosswalkMissing, Held
from shared.messages import Lookup

if TYPE_CHECKING:  # pragma: no cover
    from shared.config import AppConfig, CrosswalkTable
    from shared.config.actions import AIStandardizeAction, CrosswalkAction


@runtime_checkable
class Crosswalk(Protocol):
    """Maps a key to a value in a named table."""

    def answer(self, table_id: str, key: str | Sequence[str], *, fresh: bool = False) -> tuple[str | None, bool]:
        """(the value for ``key`` in ``table_id`` or None when the table has no entry,
        whether it came from a cache rather than the table's store). A map with
        several key columns (issuer, patient ID) takes a tuple of keys. ``fresh``: a
        miss is not answered from a cache (the entry may have been added since).

        A miss is None whatever the map's ``on_miss`` (:class:`MorphServices` applies
        it). An unknown table is a configuration error (``KeyError``); a transient backend
        failure raises :class:`shared.errors.RetryLater`."""
        ...


@runtime_checkable
class Standardizer(Protocol):
    """Normalizes a free-text value (a series description, a body part...).

    ``kind`` names what the value is (``"series_description"``, ``"free_text"``...);
    ``allowed``, when given, is the closed list the answer must come from; and
    ``instructions`` are extra guidance for a model. An implementation over Vertex AI
    (google-genai ``client.models.generate_content`` with a JSON/enum response schema
    built from ``allowed``) fits this signature; it must be deterministic for the same
    arguments (temperature 0 plus a cache) so a re-run morph writes the same bytes, and
    should raise :class:`shared.errors.RetryLater` on quota or network errors."""

    def answer(self, kind: str, value: str, *, allowed: list[str] | None = None,
               instructions: str | None = None) -> "Standardized":
        ...


@dataclass(frozen=True)
class Standardized:
    """One standardizer answer and where it came from: ``cache`` (asked before),
    ``model`` (asked now), ``fallback`` (no allowed answer: ``reason`` says why, without
    the value) or ``deterministic`` (no model configured: :class:`FakeStandardizer`).
    The rule test shows it."""

    value: str
    source: Literal["cache", "model", "fallback", "deterministic"]
    reason: str | None = None
    latency_ms: int | None = None  # of the model call, when one answered


class InMemoryCrosswalk:
    """Crosswalk over :class:`shared.config.CrosswalkTable` documents: exact keys, or
    keys compared case-insensitively (``casefold``) when the table says so."""

    def __init__(self, tables: Iterable["CrosswalkTable"] = ()):
        self._tables: dict[str, tuple[bool, dict[str, str]]] = {}
        for table in tables:
            if table.source is not None:  # a database map: shared.adapters.crosswalk_databases serves it
                continue
            entries = dict(table.entries)
            if table.case_insensitive:
                entries = {key.casefold(): value for key, value in entries.items()}
            self._tables[table.id] = (table.case_insensitive, entries)

    def lookup(self, table_id: str, key: str) -> str | None:
        try:
            case_insensitive, entries = self._tables[table_id]
        except KeyError:
            raise KeyError(f"unknown crosswalk table {table_id!r}") from None
        return entries.get(key.casefold() if case_insensitive else key)

    def answer(self, table_id: str, key: str | Sequence[str], *, fresh: bool = False) -> tuple[str | None, bool]:
        if not isinstance(key, str):
            if len(key) != 1:
                raise ValueError(f"in-memory crosswalk table {table_id!r} takes one key, got {len(key)}")
            key = key[0]
        return self.lookup(table_id, key), False


_SPACES = re.compile(r"\s+")
_NO_ALLOWED_VALUE = "\x00none"  # a cached answer: nothing in `allowed` is close


class FakeStandardizer:
    """The standardizer without a model (no ``settings.ai_standardizer``): deterministic,
    no network.

    The value is stripped, inner whitespace collapsed to one space and upper-cased (the
    usual style of DICOM descriptions). With ``allowed``, the closest allowed value by
    :func:`difflib.get_close_matches` (compared upper-case, ``cutoff``) is returned in
    its configured spelling; if none is close enough, the value is kept as it was (a
    ``fallback``: an answer is never outside ``allowed``, as with the model's default
    fallback). Answers are cached per (kind, value, allowed, instructions)."""

    def __init__(self, cutoff: float = 0.6):
        self.cutoff = cutoff
        self.calls = 0  # answers computed (cache misses), for tests
        self._cache: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def standardize(self, kind: str, value: str, *, allowed: list[str] | None = None,
                    instructions: str | None = None) -> str:
        return self.answer(kind, value, allowed=allowed, instructions=instructions).value

    def answer(self, kind: str, value: str, *, allowed: list[str] | None = None,
               instructions: str | None = None) -> Standardized:
        key = (kind, value, tuple(allowed) if allowed is not None else None, instructions)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            cached = self._answer(value, allowed)
            with self._lock:
                self.calls += 1
                self._cache[key] = cached
        if cached is _NO_ALLOWED_VALUE:
            return Standardized(value, "fallback", "no allowed value is close enough (no model configured)")
        return Standardized(cached, "deterministic")

    def _answer(self, value: str, allowed: list[str] | None) -> str:
        normalized = _SPACES.sub(" ", value).strip().upper()
        if not allowed:
            return normalized
        by_upper: dict[str, str] = {}
        for option in allowed:
            by_upper.setdefault(_SPACES.sub(" ", option).strip().upper(), option)
        if normalized in by_upper:
            return by_upper[normalized]
        close = difflib.get_close_matches(normalized, list(by_upper), n=1, cutoff=self.cutoff)
        return by_upper[close[0]] if close else _NO_ALLOWED_VALUE


def _key_description(action: "CrosswalkAction", keys: tuple[str, ...], label: str) -> str:
    """Which elements made the key a map lacks, and which of them were empty: what an
    operator needs to add the row, without the values (PHI)."""
    names = [label if address == action.tag else address for address in action.key_tags] if action.key_tags else [label]
    empty = [name for name, value in zip(names, keys) if not value.strip()]
    what = f"the value of {names[0]}" if len(names) == 1 else f"the values of {', '.join(names)}"
    return what + (f" ({', '.join(empty)} empty)" if empty else "")


class Unresolved(LookupError):
    """Morph met a lookup the crosswalk stage did not resolve (a bug, never the data:
    both run the same actions over the same immutable object)."""


@dataclass
class MorphServices:
    """Where the ``crosswalk`` and ``ai_standardize`` actions get their values.

    Live (the crosswalk stage, the rule test): ``crosswalk`` and ``standardizer`` are
    asked, a miss follows the action's ``on_missing`` or else its table's ``on_miss``
    (``tables``), and with ``record`` every answer is kept in ``recorded``. Resolved
    (morph): ``resolved`` holds the crosswalk stage's answers and nothing is asked."""

    crosswalk: Crosswalk = field(default_factory=InMemoryCrosswalk)
    standardizer: Standardizer = field(default_factory=FakeStandardizer)
    tables: Mapping[str, "CrosswalkTable"] = field(default_factory=dict)
    resolved: Sequence[Lookup] | None = None
    record: bool = False
    recorded: list[Lookup] = field(default_factory=list)
    fresh: bool = False  # misses are asked again, not answered from a cache

    @classmethod
    def from_config(cls, config: "AppConfig", *, crosswalk: Crosswalk | None = None,
                    standardizer: Standardizer | None = None) -> "MorphServices":
        """Live services for ``config``: the given crosswalk (default: its in-memory
        tables) and standardizer (default: the deterministic fake)."""
        return cls(crosswalk=crosswalk if crosswalk is not None else InMemoryCrosswalk(config.crosswalks),
                   standardizer=standardizer if standardizer is not None else FakeStandardizer(),
                   tables={table.id: table for table in config.crosswalks})

    @classmethod
    def from_lookups(cls, lookups: Sequence[Lookup]) -> "MorphServices":
        return cls(resolved=list(lookups))

    def recording(self, *, fresh: bool = False) -> "MorphServices":
        """The same services, keeping every answer in a new ``recorded``; ``fresh``:
        misses asked again (a plan retried after a miss stopped it)."""
        return MorphServices(crosswalk=self.crosswalk, standardizer=self.standardizer, tables=self.tables,
                             record=True, fresh=fresh)

    def crosswalk_value(self, index: int, action: "CrosswalkAction", keys: tuple[str, ...], label: str) -> str | None:
        """What the action at ``index`` writes for ``keys`` (None: keep the value).
        Raises :class:`CrosswalkMissing` or :class:`Held` on a miss whose policy says
        so; ``KeyError`` for an unknown table."""
        if self.resolved is not None:
            return self._resolved(index, keys)
        found, cached = self.crosswalk.answer(action.table, keys[0] if len(keys) == 1 else keys, fresh=self.fresh)
        if found is not None:
            return self._keep(Lookup(action=index, key=list(keys), value=found, source="table", cached=cached))
        table = self.tables.get(action.table)
        policy = action.on_missing or (table.on_miss if table is not None else "keep")
        if policy == "default":
            default = action.default if action.on_missing else table.default
            return self._keep(Lookup(action=index, key=list(keys), value=default, source="miss"))
        if policy in ("fail", "error", "hold"):  # counted as a miss (shared.counters), then stopped
            self._keep(Lookup(action=index, key=list(keys), value=None, source="miss"))
        what = _key_description(action, keys, label)
        if policy in ("fail", "error"):
            raise CrosswalkMissing(f"crosswalk table {action.table!r} has no entry for {what}")
        if policy == "hold":
            raise Held(f"crosswalk table {action.table!r} has no entry yet for {what}")
        return self._keep(Lookup(action=index, key=list(keys), value=None, source="miss"))

    def standardized_value(self, index: int, action: "AIStandardizeAction", value: str) -> str:
        """What the ``ai_standardize`` action at ``index`` writes for ``value``."""
        if self.resolved is not None:
            return self._resolved(index, (value,))
        answer = self.standardizer.answer(action.kind, value, allowed=action.allowed,
                                          instructions=action.instructions)
        return self._keep(Lookup(action=index, key=[value], value=answer.value, source=answer.source,
                                 latency_ms=answer.latency_ms))

    def _keep(self, lookup: Lookup) -> str | None:
        if self.record:
            self.recorded.append(lookup)
        return lookup.value

    def _resolved(self, index: int, keys: tuple[str, ...]) -> str | None:
        for lookup in self.resolved:
            if lookup.action == index and tuple(lookup.key) == keys:
                return lookup.value
        raise Unresolved(f"action {index} has no resolved value for this key")
