"""BlobStore on Google Cloud Storage (google-cloud-storage).

Only the GCP runtime and the GCP-mode gateway import this module, so importing the
client library at the top is fine here; the core never imports it.

* ``put_file`` returns when the upload call has returned: GCS has then finalized
  the object, which is durable (and, for the ingest bucket, has triggered the
  OBJECT_FINALIZE notification that starts ``match``).
* Custom metadata is the object's ``metadata`` map (string values).
* A :class:`BlobRef` with a generation reads, copies and deletes that generation,
  so a later overwrite of the same name is never mistaken for the referenced bytes.
* ``set_hold`` sets or clears the object's *temporary* hold (an objects.patch of
  ``temporaryHold``): a lifecycle Delete rule, and any delete or overwrite, waits until
  it is cleared. Not an event-based hold: without a bucket retention policy both
  kinds protect alike, and clearing either leaves the lifecycle ``age`` (counted from
  the object's creation) as it was, so an object past its age goes at the next
  lifecycle run after its last hold is cleared.
* ``STORAGE_EMULATOR_HOST`` (e.g. fake-gcs-server) is honoured by the client itself.
* Memory does not grow with the object: uploads go in :data:`UPLOAD_CHUNK_BYTES`
  requests (the library's default reads 100 MB per request into memory), downloads
  stream to a file (``download_to_filename`` without a chunk size: one request, read
  in small chunks, checksum verified).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from google.api_core import exceptions as gexc
from google.cloud import storage

from shared.messages import BlobRef

# The resumable upload reads each request's chunk into memory: 8 MiB keeps that
# bounded (a multiple of 256 KiB, as GCS requires). Objects up to 8 MiB go in one
# multipart request.
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024


class GCSBlobStore:
    def __init__(self, client: "storage.Client | None" = None, *, project: str | None = None,
                 tmp_dir: str | None = None):
        self.client = client or storage.Client(project=project or os.environ.get("GOOGLE_CLOUD_PROJECT"))
        self.tmp_dir = tmp_dir

    def _blob(self, ref: BlobRef) -> "storage.Blob":
        generation = int(ref.generation) if ref.generation else None
        return self.client.bucket(ref.bucket).blob(ref.name, generation=generation)

    @staticmethod
    def _ref(blob: "storage.Blob") -> BlobRef:
        return BlobRef(bucket=blob.bucket.name, name=blob.name,
                       generation=str(blob.generation) if blob.generation else None)

    # --- BlobStore port ------------------------------------------------------------

    def put_file(self, bucket: str, name: str, path: Path, metadata: dict[str, str] | None = None,
                 *, move: bool = False) -> BlobRef:
        blob = self.client.bucket(bucket).blob(name, chunk_size=UPLOAD_CHUNK_BYTES)
        if metadata:
            blob.metadata = {k: str(v) for k, v in metadata.items()}
        blob.upload_from_filename(str(path), content_type="application/dicom")
        if move:  # the object is in GCS now: the local copy is ours to drop
            Path(path).unlink(missing_ok=True)
        return self._ref(blob)

    @contextmanager
    def local_path(self, ref: BlobRef, *, last_read: bool = False) -> Iterator[Path]:
        # a download per call, removed afterwards: nothing is cached, last_read is moot
        fd, tmp = tempfile.mkstemp(prefix="axiom-blob-", suffix=".dcm", dir=self.tmp_dir)
        os.close(fd)
        try:
            try:
                self._blob(ref).download_to_filename(tmp)
            except gexc.NotFound:
                raise FileNotFoundError(str(ref)) from None
            yield Path(tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def metadata(self, ref: BlobRef) -> dict[str, str]:
        blob = self._blob(ref)
        try:
            blob.reload()
        except gexc.NotFound:
            return {}
        return dict(blob.metadata or {})

    def copy(self, ref: BlobRef, bucket: str, name: str) -> BlobRef:
        """Server-side copy (rewrite, so large objects and other storage classes work);
        custom metadata travels with the object."""
        source = self._blob(ref)
        dest = self.client.bucket(bucket).blob(name)
        token, _, _ = dest.rewrite(source)
        while token is not None:
            token, _, _ = dest.rewrite(source, token=token)
        return self._ref(dest)

    def delete(self, ref: BlobRef) -> None:
        try:
            self._blob(ref).delete()
        except gexc.NotFound:
            pass  # already gone: deleting is idempotent, as stages re-run

    def exists(self, ref: BlobRef) -> bool:
        return self._blob(ref).exists()

    def set_hold(self, ref: BlobRef, held: bool) -> None:
        blob = self._blob(ref)
        blob.temporary_hold = held
        try:
            blob.patch()  # sends only the changed field
        except gexc.NotFound:
            pass  # gone already (removed before it was planned, or deleted): nothing to keep

    # --- helpers (tests, tooling) ----------------------------------------------------

    def list(self, bucket: str, prefix: str | None = None) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(bucket, prefix=prefix))

    def read_bytes(self, ref: BlobRef) -> bytes:
        return self._blob(ref).download_as_bytes()
