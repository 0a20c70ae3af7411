"""Filesystem destination: an atomic, durable copy under a directory, named from tags."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom import dcmread

from shared.adapters.files import durable_place
from shared.config import FilesystemDestination, GCSDestination
from shared.dicom.io import sha256_file
from shared.errors import DeliveryRefused, RetryLater, Unprocessable
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
            if sha256_file(target) == delivery.sha256:
                return f"{target} (already there)"
            raise DeliveryRefused(f"{target.name} exists at {self.dest.id} with different bytes")
        durable_place(path, target, move=False)
        return str(target)

    def close(self) -> None:
        pass


class GCSSender:
    """Upload with ``if_generation_match=0`` (create only): an existing object with our
    sha256 is the same delivery; with another it is a conflict."""

    def __init__(self, dest: GCSDestination):
        from google.cloud import storage  # only needed when a GCS destination exists

        self.dest = dest
        self.bucket = storage.Client().bucket(dest.bucket)

    def send(self, path: Path, delivery: Delivery) -> str:
        from google.api_core import exceptions as gexc

        name = object_name(self.dest.name_template, path)
        blob = self.bucket.blob(name)
        blob.metadata = {"axiom-sha256": delivery.sha256, "axiom-sop-instance-uid": delivery.sop_instance_uid}
        try:
            blob.upload_from_filename(str(path), content_type="application/dicom",
                                      if_generation_match=None if self.dest.on_conflict == "overwrite" else 0)
        except gexc.PreconditionFailed:
            blob.reload()
            if (blob.metadata or {}).get("axiom-sha256") == delivery.sha256:
                return f"gs://{self.dest.bucket}/{name} (already there)"
            raise DeliveryRefused(f"gs://{self.dest.bucket}/{name} exists with different bytes") from None
        except (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.TooManyRequests, ConnectionError) as exc:
            raise RetryLater(f"GCS upload to {self.dest.bucket} failed: {exc}") from exc
        return f"gs://{self.dest.bucket}/{name}"

    def close(self) -> None:
        pass
