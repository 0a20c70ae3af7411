"""Filesystem destination: an atomic, durable copy under a directory, named from tags.

The name comes from tag values, which a sender controls: :func:`object_name` keeps it
inside the destination's root whatever they are, and no message here carries the name
or the path (they are made of patient data: PatientID, names, accession numbers)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from pydicom import dcmread
from pydicom.multival import MultiValue

from shared.adapters.files import durable_place
from shared.config import FilesystemDestination
from shared.dicom.io import content_digest
from shared.errors import DeliveryRefused, RetryLater
from shared.logs import describe_os_error
from shared.messages import Delivery
from shared.templates import UnsafeName, render_name

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

# Errors about the name itself: the same name fails the same way on every attempt.
_NAME_ERRORS = {
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.EISDIR: "a folder already has this instance's name",
    errno.ENOTDIR: "a part of the name that must be a folder is a file",
    errno.ELOOP: "the name passes through a symbolic link loop",
    errno.EINVAL: "the file system does not accept the name",
    errno.EILSEQ: "the file system does not accept the name's characters",
}


def object_name(template: str, path: Path) -> str:
    """Fill a name template from the instance's header (filesystem paths and GCS
    object names). Each value has every character but letters, digits, '.', '_' and '-'
    replaced by '_' (so no value holds a separator or NUL); then the name must stay
    inside the destination's root (:func:`shared.templates.render_name`: no '.' or '..'
    component, none over 255 bytes, at most 1024 bytes in all). A field that is empty
    or makes an unsafe name refuses the delivery (:class:`DeliveryRefused`): the reason
    names the element, never its value."""
    from shared.dicom.tags import locate, parse_path

    ds = dcmread(path, stop_before_pixels=True)

    def lookup(address: str) -> str:
        places = locate(ds, parse_path(address))
        value = places[0][0][places[0][1]].value if places else None
        if isinstance(value, MultiValue):  # as DICOM text: values joined by backslashes (PS3.5 6.4)
            value = "\\".join(str(v) for v in value)
        value = str(value or "").strip()
        if not value:
            raise DeliveryRefused(f"name template field {address} is empty in this instance")
        return _UNSAFE.sub("_", value)

    try:
        return render_name(template, lookup)
    except UnsafeName as exc:
        raise DeliveryRefused(f"the name template cannot name this instance safely: {exc}") from None


def refused_or_retried(dest_id: str, exc: OSError) -> DeliveryRefused | RetryLater:
    """An OS error while placing an instance, as an error for the stage, without the
    path (it is made of tag values). Errors about the name itself are refused (the
    same name fails the same way on every attempt); others (a full disk, permissions,
    I/O) are worth retrying."""
    if exc.errno in _NAME_ERRORS:
        return DeliveryRefused(f"destination {dest_id} cannot store this instance under its name: "
                               f"{_NAME_ERRORS[exc.errno]} ({describe_os_error(exc)})")
    return RetryLater(f"destination {dest_id}: writing the instance failed ({describe_os_error(exc)})")


class FilesystemSender:
    def __init__(self, dest: FilesystemDestination, base_dir: Path):
        self.dest = dest
        root = Path(dest.path)
        self.root = root if root.is_absolute() else base_dir / root

    def send(self, path: Path, delivery: Delivery) -> str:
        name = object_name(self.dest.name_template, path)
        target = self.root / name
        root = os.path.normpath(self.root)
        if not os.path.normpath(target).startswith(root + os.sep):  # render_name makes this impossible
            raise DeliveryRefused(f"the name template of destination {self.dest.id} leaves its folder")
        try:
            if target.exists() and self.dest.on_conflict == "exception":
                existing = content_digest(target, ignore_last_modification_time=delivery.original_attributes_added)
                if existing == delivery.sha256:
                    return f"{target} (already there)"
                raise DeliveryRefused(f"{self.dest.id} already has a different data set under this instance's name "
                                      f"(SOP Instance {delivery.sop_instance_uid})")
            durable_place(path, target, move=False)
        except OSError as exc:
            raise refused_or_retried(self.dest.id, exc) from None
        return str(target)

    def close(self) -> None:
        pass
