"""Filesystem destination: an atomic, durable copy under a directory, named from tags."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom import dcmread

from shared.adapters.files import durable_place
from shared.config import FilesystemDestination
from shared.dicom.io import content_digest
from shared.errors import DeliveryRefused, Unprocessable
from shared.messages import Delivery
from shared.templates import render

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def object_name(template: str, path: Path) -> str:
    """Fill the name template from the instance's header; values are made path-safe
    and an empty field is refused (it would collapse paths)."""
    ds = dcmread(path, stop_before_pixels=True)

    def lookup(address: str) -> str:
        from shared.dicom.tags import locate, parse_path

        places = locate(ds, parse_path(address))
        value = str(places[0][0][places[0][1]].value or "").strip() if places else ""
        if not value:
            raise Unprocessable(f"name template field {address} is empty in this instance")
        return _UNSAFE.sub("_", value)

    return render(template, lookup)


class FilesystemSender:
    def __init__(self, dest: FilesystemDestination, base_dir: Path):
        self.dest = dest
        root = Path(dest.path)
        self.root = root if root.is_absolute() else base_dir / root

    def send(self, path: Path, delivery: Delivery) -> str:
        target = self.root / object_name(self.dest.name_template, path)
        if target.exists() and self.dest.on_conflict == "exception":
            existing = content_digest(target.read_bytes(),
                                      ignore_last_modification_time=delivery.original_attributes_added)
            if existing == delivery.sha256:
                return f"{target} (already there)"
            raise DeliveryRefused(f"{target.name} exists at {self.dest.id} with a different data set "
                                  "for the same SOP Instance UID")
        durable_place(path, target, move=False)
        return str(target)

    def close(self) -> None:
        pass
