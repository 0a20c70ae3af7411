"""Reading a STOW-RS request body (PS3.18 10.5.1) into temporary files, one per part,
as it arrives, so memory use does not grow with the request. The multipart/related
framing is read by :mod:`shared.dicomweb.multipart`. A body whose framing is broken,
that cannot be read to its end, or that goes over ``stow.max_request_bytes`` leaves no
file behind and raises :class:`StowError`: the client cannot tell which parts got
through, so none do."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from multipart import parse_options_header

from shared.dicomweb.multipart import MalformedMultipart, MultipartTooLarge, boundary_of, spool_parts

DICOM = "application/dicom"
READ_CHUNK = 256 * 1024


class StowError(Exception):
    """The request as a whole is refused with HTTP ``status`` and nothing is stored."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def too_large(limit: int) -> StowError:
    return StowError(413, f"request body is larger than the limit of {limit} bytes (stow.max_request_bytes)")


def parse_content_type(value: str | None) -> tuple[str, str | None]:
    """("multipart", boundary) or ("single", None) for a STOW-RS request's Content-Type;
    :class:`StowError` 415 for media types this endpoint does not take, 400 for a
    multipart type without a (valid) boundary."""
    if not value:
        raise StowError(415, f'Content-Type is missing: send multipart/related; type="{DICOM}" or {DICOM}')
    mime, options = parse_options_header(value)
    if mime == DICOM:
        return "single", None
    if mime != "multipart/related":
        raise StowError(415, f'unsupported media type {mime!r}: send multipart/related; type="{DICOM}" or {DICOM}')
    part_type = options.get("type", DICOM).lower().strip()
    if part_type != DICOM:
        raise StowError(415, f"unsupported multipart/related type {part_type!r}: only {DICOM} parts"
                             " (Part 10 files) are accepted, not metadata and bulk data")
    try:
        return "multipart", boundary_of(value)
    except MalformedMultipart as exc:
        raise StowError(400, f"multipart/related: {exc}") from None


@dataclass
class SpooledPart:
    index: int  # 1-based position of the part in the request
    path: Path
    content_type: str | None  # None: no Content-Type header, i.e. the request's type


def spool_body(stream: IO[bytes], kind: str, boundary: str | None, max_bytes: int,
               tmp_dir: str | None = None) -> list[SpooledPart]:
    """Each part of the body (``kind`` and ``boundary`` from :func:`parse_content_type`)
    in its own temporary file, which the caller then owns."""
    if kind == "single":
        return [_spool_single(stream, max_bytes, tmp_dir)]
    try:
        parts = spool_parts(_chunks(stream), boundary, max_bytes=max_bytes, tmp_dir=tmp_dir, prefix="stow-")
    except MultipartTooLarge:
        raise too_large(max_bytes) from None
    except MalformedMultipart as exc:
        raise StowError(400, f"malformed multipart/related body: {exc}") from None
    if not parts:
        raise StowError(400, "the multipart/related body holds no parts")
    return [SpooledPart(i, part.path, part.content_type) for i, part in enumerate(parts, 1)]


def _spool_single(stream: IO[bytes], max_bytes: int, tmp_dir: str | None) -> SpooledPart:
    """An application/dicom body: one instance, the whole body."""
    fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=tmp_dir)
    path, total = Path(name), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(stream):
                total += len(chunk)
                if total > max_bytes:
                    raise too_large(max_bytes)
                out.write(chunk)
        if total == 0:
            raise StowError(400, "the request body is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return SpooledPart(1, path, DICOM)


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        try:
            chunk = stream.read(READ_CHUNK)
        except Exception as exc:  # client gone, broken chunked encoding, short body
            raise StowError(400, f"the request body could not be read to its end ({type(exc).__name__})") from None
        if not chunk:
            return
        yield chunk
