"""GCS destination: one object per instance, named from tags (see filesystem.object_name)."""

from __future__ import annotations

from pathlib import Path

from shared.config import GCSDestination
from shared.destinations.filesystem import object_name
from shared.errors import DeliveryRefused, RetryLater
from shared.messages import Delivery


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
            raise DeliveryRefused(f"gs://{self.dest.bucket}/{name} exists with a different data set for "
                                  f"SOP Instance {delivery.sop_instance_uid}") from None
        except (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.TooManyRequests, ConnectionError) as exc:
            raise RetryLater(f"GCS upload to {self.dest.bucket} failed: {exc}") from exc
        return f"gs://{self.dest.bucket}/{name}"

    def close(self) -> None:
        pass
