"""Durable local file writes: write to a temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """``mkdir -p`` whose new directories survive a crash: each new directory's entry
    is fsynced in its parent."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def durable_place(src: Path, dest: Path, *, move: bool) -> None:
    """Put ``src`` at ``dest`` atomically and durably. With ``move`` the source file is
    renamed; without, it is hard-linked (both names then share bytes that nothing
    changes in place: every write here replaces a file). Either falls back to a copy
    across filesystems. A failure leaves no temporary file behind (``dest`` a folder,
    a full disk, ...)."""
    ensure_dir(dest.parent)
    with open(src, "rb") as fh:
        os.fsync(fh.fileno())
    try:
        if move:
            os.replace(src, dest)
        else:
            tmp = dest.parent / f".tmp-{os.getpid()}-{os.urandom(6).hex()}"
            os.link(src, tmp)
            try:
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        fsync_dir(dest.parent)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        os.close(fd)
        shutil.copyfile(src, tmp)  # sendfile where the kernel can
        with open(tmp, "rb") as out:
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def drop_cached(path: Path) -> None:
    """Let the OS drop ``path``'s pages from its page cache; the file stays as it is.
    Only clean pages go, so call it on files already fsynced. A router streams each
    instance through once: pages nobody will read again are better reused for the next
    instance's writes (measured in bench/results/route.md) than kept until memory runs
    short. A no-op where posix_fadvise is missing (macOS, Windows)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)

