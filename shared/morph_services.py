"""Services the morph actions call out to: crosswalk tables and the AI standardizer.

Both are Protocols so the production implementations (crosswalk databases, Vertex AI
Gemini through google-genai) plug in later without touching ``shared/morph.py``. Here:

- :class:`InMemoryCrosswalk` serves the in-memory ``crosswalks`` tables of the config
  (:class:`shared.adapters.crosswalk_databases.DatabaseCrosswalk` serves those read from databases too);
- :class:`FakeStandardizer` is deterministic (whitespace and case normalization, closest
  allowed value by :mod:`difflib`) and caches its answers, as the real one will.

Values passed to these services are often PHI (a Patient ID is a crosswalk key):
implementations must never log them or put them into exception messages.
"""

from __future__ import annotations

import difflib
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Literal, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from shared.config import AppConfig, CrosswalkTable


@runtime_checkable
class Crosswalk(Protocol):
    """Maps a key to a value in a named table."""

    def lookup(self, table_id: str, key: str | Sequence[str]) -> str | None:
        """The value for ``key`` in ``table_id``; None when the table has no entry.
        A map with several key columns (issuer, patient ID) takes a tuple of keys.

        A database map may instead follow its ``on_miss``: return its default, or raise
        :class:`shared.errors.CrosswalkMissing` or :class:`shared.errors.Held`. An
        unknown table is a configuration error (``KeyError``); a transient backend failure
        should raise :class:`shared.errors.RetryLater`."""
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

    def standardize(self, kind: str, value: str, *, allowed: list[str] | None = None,
                    instructions: str | None = None) -> str:
        ...


@dataclass(frozen=True)
class Standardized:
    """One standardizer answer and where it came from: ``cache`` (asked before),
    ``model`` (asked now) or ``fallback`` (the model could not answer: ``reason`` says
    why, without the value). The rule test's dry-run shows it."""

    value: str
    source: Literal["cache", "model", "fallback"]
    reason: str | None = None


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


_SPACES = re.compile(r"\s+")


class FakeStandardizer:
    """A deterministic stand-in for the AI standardizer (no network).

    The value is stripped, inner whitespace collapsed to one space and upper-cased (the
    usual style of DICOM descriptions). With ``allowed``, the closest allowed value by
    :func:`difflib.get_close_matches` (compared upper-case, ``cutoff``) is returned in
    its configured spelling; if none is close enough, the normalized value.
    Answers are cached per (kind, value, allowed, instructions)."""

    def __init__(self, cutoff: float = 0.6):
        self.cutoff = cutoff
        self.calls = 0  # answers computed (cache misses), for tests
        self._cache: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def standardize(self, kind: str, value: str, *, allowed: list[str] | None = None,
                    instructions: str | None = None) -> str:
        key = (kind, value, tuple(allowed) if allowed is not None else None, instructions)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = self._answer(value, allowed)
        with self._lock:
            self.calls += 1
            self._cache[key] = answer
        return answer

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
        return by_upper[close[0]] if close else normalized


@dataclass
class MorphServices:
    """What the morph actions need besides the dataset. The stage builds one per config
    (``MorphServices.from_config``) and passes it to :func:`shared.morph.apply_actions`."""

    crosswalk: Crosswalk = field(default_factory=InMemoryCrosswalk)
    standardizer: Standardizer = field(default_factory=FakeStandardizer)

    @classmethod
    def from_config(cls, config: "AppConfig", *, standardizer: Standardizer | None = None) -> "MorphServices":
        """In-memory crosswalk over ``config.crosswalks``; the fake standardizer unless
        one is given (the Vertex AI one, later)."""
        return cls(crosswalk=InMemoryCrosswalk(config.crosswalks),
                   standardizer=standardizer if standardizer is not None else FakeStandardizer())
