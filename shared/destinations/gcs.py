"""GCS destination: one object per instance, named from tags (see filesystem.object_name).
No message here carries the object name: it is made of tag values."""

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

        from shared.adapters.gcs import UPLOAD_CHUNK_BYTES

        self.dest = dest
        self.bucket = storage.Client().bucket(dest.bucket)
        self.chunk_size = UPLOAD_CHUNK_BYTES  # memory bounded whatever the instance's size

    def send(self, path: Path, delivery: Delivery) -> str:
        from google.api_core import exceptions as gexc

        name = object_name(self.dest.name_template, path)
        blob = self.bucket.blob(name, chunk_size=self.chunk_size)
        blob.metadata = {"axiom-sha256": delivery.sha256, "axiom-sop-instance-uid": delivery.sop_instance_uid}
        try:
            blob.upload_from_filename(str(path), content_type="application/dicom",
                                      if_generation_match=None if self.dest.on_conflict == "overwrite" else 0)
        except gexc.PreconditionFailed:
            blob.reload()
            if (blob.metadata or {}).get("axiom-sha256") == delivery.sha256:
                return f"gs://{self.dest.bucket}/{name} (already there)"
            raise DeliveryRefused(f"{self.dest.id} already has a different data set under this instance's object "
                                  f"name in bucket {self.dest.bucket} (SOP Instance {delivery.sop_instance_uid})") from None
        except gexc.BadRequest as exc:  # GCS's messages quote the request URL, which holds the name
            raise DeliveryRefused(f"GCS refused the upload to bucket {self.dest.bucket}: HTTP {exc.code} "
                                  f"{type(exc).__name__}") from None
        except gexc.GoogleAPICallError as exc:  # permissions, a missing bucket, outages: worth retrying
            raise RetryLater(f"GCS upload to bucket {self.dest.bucket} failed: HTTP {exc.code} "
                             f"{type(exc).__name__}") from None
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            raise RetryLater(f"GCS upload to bucket {self.dest.bucket} failed: {type(exc).__name__}") from None
        return f"gs://{self.dest.bucket}/{name}"

    def close(self) -> None:
        pass
