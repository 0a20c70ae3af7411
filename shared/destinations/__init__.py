"""Destinations: each module sends one morphed instance to one kind of peer.

``send`` raises :class:`shared.errors.RetryLater` for anything worth retrying
(peer down, timeout, failure status); the route stage turns the last failure into
an exception record."""

from __future__ import annotations

from pathlib import Path

from shared.config import CStoreDestination, FilesystemDestination
from shared.destinations import cstore, filesystem


def send(destination, path: Path, *, base_dir: Path) -> str:
    """Send the Part 10 file at ``path``; return where it went (for the ledger)."""
    if isinstance(destination, FilesystemDestination):
        return filesystem.send(destination, path, base_dir=base_dir)
    if isinstance(destination, CStoreDestination):
        return cstore.send(destination, path)
    raise TypeError(f"no sender for destination type {type(destination).__name__}")
