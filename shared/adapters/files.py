"""Durable local file writes: write to a temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

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


def durable_place(src: Path, dest: Path, *, move: bool) -> None:
    """Put ``src`` at ``dest`` atomically and durably. With ``move`` the source file is
    renamed when it lives on the same filesystem (no copy); otherwise it is copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if move:
        try:
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(src, dest)
            fsync_dir(dest.parent)
            return
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: other filesystem, fall back to copying
                raise
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def durable_write_bytes(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
