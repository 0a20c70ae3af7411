"""Filesystem destination: an atomic, durable copy under a directory, named from tags."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom import dcmread

from shared.adapters.files import durable_place
from shared.config import FilesystemDestination
from shared.errors import Unprocessable

_FIELD = re.compile(r"\{([A-Za-z0-9]+)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def object_name(template: str, path: Path) -> str:
    """Fill ``{Keyword}`` fields from the instance's header; values are made path-safe."""
    ds = dcmread(path, stop_before_pixels=True)

    def fill(m: re.Match) -> str:
        value = str(ds.get(m.group(1), "") or "").strip()
        if not value:
            raise Unprocessable(f"name template field {m.group(1)} is empty in this instance")
        return _UNSAFE.sub("_", value)

    return _FIELD.sub(fill, template)


def send(dest: FilesystemDestination, path: Path, *, base_dir: Path) -> str:
    root = Path(dest.path)
    if not root.is_absolute():
        root = base_dir / root
    target = root / object_name(dest.name_template, path)
    durable_place(path, target, move=False)
    return str(target)
