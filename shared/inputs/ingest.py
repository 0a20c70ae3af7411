"""The one way into the pipeline: store a received instance, with how it arrived, in
the ingest bucket. Every input (C-STORE gateway, STOW-RS, pollers) calls this; the
bucket's finalize notification then starts ``match``."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from shared.messages import BlobRef, IngestMetadata
from shared.ports import BlobStore

_UNSAFE = re.compile(r"[^0-9A-Za-z.]")


class Ingestor:
    def __init__(self, blobs: BlobStore, bucket: str):
        self.blobs = blobs
        self.bucket = bucket

    def object_name(self, meta: IngestMetadata) -> str:
        uid = _UNSAFE.sub("_", meta.sop_instance_uid)[:64] or "unknown"
        # one directory per day: creating a directory per instance costs more than the write
        return f"{meta.received_at:%Y/%m/%d}/{uid}-{uuid.uuid4().hex}.dcm"

    def ingest_file(self, path: Path, meta: IngestMetadata, *, move: bool = False) -> BlobRef:
        """Durably store ``path``; when this returns, the instance cannot be lost.

        The object is not hashed here, as a C-STORE answer waits for this: morph hashes
        what it delivers (the morphed object, or the received one when nothing changed)."""
        return self.blobs.put_file(self.bucket, self.object_name(meta), path, meta.to_blob_metadata(), move=move)
