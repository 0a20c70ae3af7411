"""BlobStore on a local directory: ``ROOT/BUCKET/NAME``, object metadata in the SQLite
file ``ROOT/.metadata.db``. Like a GCS bucket with notifications, it can call
``on_finalize`` for new objects in chosen buckets; the call happens before
``put_file`` returns, so a durable bus publish there keeps the ingest guarantee."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from shared.adapters.files import drop_cached, durable_place
from shared.adapters.sqlite import SQLiteDatabase
from shared.messages import BlobRef, ObjectFinalized


class LocalBlobStore:
    def __init__(self, root: Path, on_finalize: Callable[[ObjectFinalized], None] | None = None,
                 notify_buckets: frozenset[str] = frozenset()):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.on_finalize = on_finalize
        self.notify_buckets = notify_buckets
        # A table, not a file per object: creating a file cost 0.3-0.6 ms on the C-STORE
        # path, an insert 25 us. Not fsynced (NORMAL): the metadata also travels, durably,
        # in the finalize message; this copy serves later reads (quarantine, inspection).
        # A bucket name cannot start with '.', so the file is no bucket.
        self._metadata = SQLiteDatabase(self.root / ".metadata.db", synchronous="NORMAL")
        self._metadata.conn().execute(
            "CREATE TABLE IF NOT EXISTS object_metadata (bucket TEXT NOT NULL, name TEXT NOT NULL,"
            " body TEXT NOT NULL, PRIMARY KEY (bucket, name))")

    def _path(self, bucket: str, name: str) -> Path:
        # lexical check (no realpath: it costs a stat per path component): nothing in a
        # bucket is a symlink, so only '..' and absolute names can leave it
        base = os.path.join(self.root, bucket)
        path = os.path.normpath(os.path.join(base, name))
        if not path.startswith(base + os.sep) or os.sep in bucket or bucket.startswith(".") or not bucket:
            raise ValueError(f"object name escapes its bucket: {bucket!r}/{name!r}")
        return Path(path)

    def put_file(self, bucket, name, path, metadata=None, *, move=False) -> BlobRef:
        dest = self._path(bucket, name)
        durable_place(Path(path), dest, move=move)  # a failure leaves neither a file nor a row
        # as in GCS, an upload replaces the object's metadata (none: none left). After
        # the file: a crash in between leaves an object nobody was told about (the
        # finalize message below was not sent), whose upload is then repeated.
        if metadata:
            self._metadata.conn().execute("INSERT OR REPLACE INTO object_metadata (bucket, name, body) VALUES (?,?,?)",
                                          (bucket, name, json.dumps(metadata)))
        else:
            self._forget_metadata(bucket, name)
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
        row = self._metadata.conn().execute("SELECT body FROM object_metadata WHERE bucket=? AND name=?",
                                            (ref.bucket, ref.name)).fetchone()
        return json.loads(row[0]) if row else {}

    def _forget_metadata(self, bucket: str, name: str) -> None:
        self._metadata.conn().execute("DELETE FROM object_metadata WHERE bucket=? AND name=?", (bucket, name))

    def copy(self, ref: BlobRef, bucket: str, name: str) -> BlobRef:
        with self.local_path(ref) as src:
            return self.put_file(bucket, name, src, self.metadata(ref))

    def delete(self, ref: BlobRef) -> None:
        self._path(ref.bucket, ref.name).unlink(missing_ok=True)
        self._forget_metadata(ref.bucket, ref.name)

    def exists(self, ref: BlobRef) -> bool:
        return self._path(ref.bucket, ref.name).exists()

    def set_hold(self, ref: BlobRef, held: bool) -> None:
        """Nothing to do: the retention sweeper (shared/runtime/retention.py) reads the
        open exception records itself and never takes out an object one names."""

    def list(self, bucket: str) -> list[str]:
        base = self.root / bucket
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(base)) for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def old_objects(self, bucket: str, older_than: float) -> Iterator[tuple[str, int]]:
        """Name and size of each object in ``bucket`` last placed before ``older_than``
        (epoch seconds): the later of its mtime and ctime, as a link or rename (a
        quarantine copy, a move into the bucket) sets the ctime and may keep an old
        mtime. Date directories (``YYYY/MM/DD``: shared/inputs/ingest.py,
        stages.processed_name) after that day are not even listed, so today's, where
        new objects arrive, is left alone."""
        limit = _day(older_than)

        def walk(path: str, rel: str, date: tuple[int, ...] | None) -> Iterator[tuple[str, int]]:
            # date: the date parts of the directories so far; None below one that is not
            try:
                entries = list(os.scandir(path))
            except FileNotFoundError:
                return
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    sub = None
                    if date is not None and len(date) < 3 and entry.name.isdigit():
                        sub = (*date, int(entry.name))
                        if sub > limit[:len(sub)]:
                            continue  # a later day: nothing in it is old enough
                    yield from walk(entry.path, f"{rel}{entry.name}/", sub)
                elif entry.is_file(follow_symlinks=False) and not entry.name.startswith(".tmp-"):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if max(st.st_mtime, st.st_ctime) < older_than:
                        yield f"{rel}{entry.name}", st.st_size

        if (self.root / bucket).is_dir():
            yield from walk(str(self.root / bucket), "", ())

    def take_out(self, bucket: str, names: list[str], into: Path, older_than: float) -> list[str]:
        """Move the objects ``names`` (from :meth:`old_objects` with ``older_than``) out
        of ``bucket`` into the directory ``into`` (same filesystem: renames, no data
        copied, no inode freed) and forget their metadata first, so that a crash in
        between leaves an object without metadata, never metadata without an object.
        Returns the names moved; objects gone meanwhile are skipped. A date directory
        left empty is removed when its whole period lies before ``older_than``'s day:
        no input creates files there any more (a C-STORE's goes under today)."""
        into.mkdir(parents=True, exist_ok=True)
        with self._metadata.transaction() as conn:
            conn.executemany("DELETE FROM object_metadata WHERE bucket=? AND name=?", [(bucket, n) for n in names])
        moved, emptied = [], set()
        for name in names:
            src = self._path(bucket, name)
            dest = into / f"{bucket}.{os.urandom(8).hex()}.dcm"
            try:
                os.rename(src, dest)
            except FileNotFoundError:
                continue
            moved.append(name)
            emptied.add(os.path.dirname(name))
        limit = _day(older_than)
        for rel in sorted(emptied, key=len, reverse=True):
            parts = rel.split("/")
            while parts and len(parts) <= 3 and all(p.isdigit() for p in parts) \
                    and tuple(map(int, parts)) < limit[:len(parts)]:
                try:
                    (self.root / bucket / "/".join(parts)).rmdir()  # only when empty
                except OSError:
                    break
                parts = parts[:-1]
        return moved


def _day(epoch_s: float) -> tuple[int, int, int]:
    """The UTC date of a time, as the date directories name it."""
    d = datetime.fromtimestamp(epoch_s, timezone.utc)
    return d.year, d.month, d.day
