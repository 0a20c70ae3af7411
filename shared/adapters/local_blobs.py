"""BlobStore on a local directory: ``ROOT/BUCKET/NAME``, metadata in
``ROOT/BUCKET/.meta/NAME.json``. Like a GCS bucket with notifications, it can call
``on_finalize`` for new objects in chosen buckets; the call happens before
``put_file`` returns, so a durable bus publish there keeps the ingest guarantee."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from shared.adapters.files import drop_cached, durable_place, write_bytes_atomic
from shared.messages import BlobRef, ObjectFinalized


class LocalBlobStore:
    def __init__(self, root: Path, on_finalize: Callable[[ObjectFinalized], None] | None = None,
                 notify_buckets: frozenset[str] = frozenset()):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.on_finalize = on_finalize
        self.notify_buckets = notify_buckets

    def _path(self, bucket: str, name: str) -> Path:
        # lexical check (no realpath: it costs a stat per path component): nothing in a
        # bucket is a symlink, so only '..' and absolute names can leave it
        base = os.path.join(self.root, bucket)
        path = os.path.normpath(os.path.join(base, name))
        if not path.startswith(base + os.sep) or name.startswith(".meta/") or os.sep in bucket or bucket in ("", ".", ".."):
            raise ValueError(f"object name escapes its bucket: {bucket!r}/{name!r}")
        return Path(path)

    def _meta_path(self, bucket: str, name: str) -> Path:
        return self.root / bucket / ".meta" / f"{name}.json"

    def put_file(self, bucket, name, path, metadata=None, *, move=False) -> BlobRef:
        dest = self._path(bucket, name)
        # The sidecar is not fsynced: the metadata also travels, durably, in the
        # finalize message; the sidecar serves later reads (quarantine, inspection).
        # No metadata, no sidecar (morphed objects): a file per object costs.
        if metadata:
            write_bytes_atomic(self._meta_path(bucket, name), json.dumps(metadata).encode())
        else:
            self._meta_path(bucket, name).unlink(missing_ok=True)
        durable_place(Path(path), dest, move=move)
        ref = BlobRef(bucket=bucket, name=name, generation=str(time.time_ns()))
        if self.on_finalize and bucket in self.notify_buckets:
            self.on_finalize(ObjectFinalized(blob=ref, metadata=metadata or {}))
        return ref

    @contextmanager
    def local_path(self, ref: BlobRef, *, last_read: bool = False) -> Iterator[Path]:
        path = self._path(ref.bucket, ref.name)
        if not path.exists():
            raise FileNotFoundError(str(ref))
        try:
            yield path
        finally:
            if last_read:
                drop_cached(path)

    def metadata(self, ref: BlobRef) -> dict[str, str]:
        try:
            return json.loads(self._meta_path(ref.bucket, ref.name).read_text())
        except FileNotFoundError:
            return {}

    def copy(self, ref: BlobRef, bucket: str, name: str) -> BlobRef:
        with self.local_path(ref) as src:
            return self.put_file(bucket, name, src, self.metadata(ref))

    def delete(self, ref: BlobRef) -> None:
        self._path(ref.bucket, ref.name).unlink(missing_ok=True)
        self._meta_path(ref.bucket, ref.name).unlink(missing_ok=True)

    def exists(self, ref: BlobRef) -> bool:
        return self._path(ref.bucket, ref.name).exists()

    def list(self, bucket: str) -> list[str]:
        base = self.root / bucket
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(base)) for p in base.rglob("*")
            if p.is_file() and ".meta" not in p.relative_to(base).parts and not p.name.startswith(".tmp-")
        )
