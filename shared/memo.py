"""Values derived once from an immutable object (a parsed config, a ruleset)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class PerObject(Generic[K, V]):
    """``build(obj)``, computed once per object and kept for up to ``max_entries``
    objects. Keyed by ``id()`` (config models are not hashable); each entry holds its
    object, so that id cannot be reused by another object while the entry lives."""

    def __init__(self, build: Callable[[K], V], max_entries: int):
        self.build = build
        self.max_entries = max_entries
        self._entries: dict[int, tuple[K, V]] = {}

    def __call__(self, obj: K) -> V:
        cached = self._entries.get(id(obj))
        if cached is None:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # a config reload replaces them all
            cached = self._entries[id(obj)] = (obj, self.build(obj))
        return cached[1]
