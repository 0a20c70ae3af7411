"""multipart/related (RFC 2387, framed as RFC 2046 section 5.1) as DICOMweb uses it
(PS3.18 section 8.6): the body of a STOW-RS request and of a WADO-RS response.

Reading is built on ``multipart``'s push parser, fed chunk by chunk, so a part may be
split across chunks anywhere, delimiters included. :func:`spool_parts` writes each
part's body to its own temporary file as it arrives (memory does not grow with the
body); :func:`read_parts` keeps them in memory, for small bodies. Both stop at
``max_bytes`` (:class:`MultipartTooLarge`) and raise :class:`MalformedMultipart` for a
body that is not multipart with that boundary, or that ends before its closing
delimiter. Writing: :func:`write_parts` streams files as the parts of one body.

This module is transport only: no HTTP client or server, no adapter.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

DICOM = "application/dicom"
MAX_HEADER_COUNT = 32  # per part; DICOMweb parts carry a few (Content-Type, Content-Location...)
WRITE_CHUNK = 256 * 1024
# RFC 2046 5.1.1: 1 to 70 characters of bchars, the last one not a space
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


# Request headers that ask for a body as sent, without a content coding (RFC 9110
# 12.5.3). An HTTP client decodes a gzip body into pieces as large as each network
# chunk expands to, and pixel data of zeros expands a thousandfold: reading in chunks
# bounds memory only for a body that is not content-coded. (Orthanc gzips by default.)
AS_SENT = {"Accept-Encoding": "identity"}


def content_coding(headers) -> str | None:
    """The Content-Encoding of a response that should have none (see AS_SENT), or None."""
    coding = (headers.get("content-encoding") or "identity").strip().lower()
    return None if coding == "identity" else coding


class MalformedMultipart(ValueError):
    """The body is not multipart with the given boundary, or it is cut short."""


class MultipartTooLarge(ValueError):
    """The body is longer than the reader's ``max_bytes``."""

    def __init__(self, limit: int):
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


@dataclass
class Part:
    """One body part: ``headers`` with lower-cased names; ``content_type`` the media
    type without parameters, lower-cased (None: no Content-Type header, which RFC 2387
    lets default to the ``type`` of the multipart/related body). The body is in
    ``path`` (a temporary file the caller owns) or ``data``."""

    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    path: Path | None = None
    data: bytes | None = None


def boundary_of(content_type: str | None) -> str:
    """The ``boundary`` parameter of a multipart Content-Type header value;
    :class:`MalformedMultipart` when there is none or it is not an RFC 2046 boundary."""
    _, options = parse_options_header(content_type or "")
    boundary = options.get("boundary")
    if not boundary:
        raise MalformedMultipart(f"multipart content type without a boundary: {(content_type or '')[:200]!r}")
    return _checked(boundary)


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_content_type(boundary: str, part_type: str = DICOM) -> str:
    """The Content-Type of a multipart/related body of ``part_type`` parts (PS3.18 8.6.1)."""
    return f'multipart/related; type="{part_type}"; boundary={_checked(boundary)}'


def _framing(boundary: str, content_type: str) -> tuple[bytes, bytes]:
    """A part's head and the closing delimiter (RFC 2046 5.1.1)."""
    delimiter = b"--" + _checked(boundary).encode("ascii")
    return delimiter + b"\r\nContent-Type: " + content_type.encode("ascii") + b"\r\n\r\n", delimiter + b"--\r\n"


def parts_length(paths: Iterable[Path], boundary: str, content_type: str = DICOM) -> int:
    """The length of :func:`write_parts`' body, from the files' sizes: sent as
    Content-Length, so the server can take the body without chunked decoding (Orthanc
    stores a 1 GB chunked body more than ten times slower)."""
    head, end = _framing(boundary, content_type)
    return sum(len(head) + Path(path).stat().st_size + 2 for path in paths) + len(end)


def write_parts(paths: Iterable[Path], boundary: str, content_type: str = DICOM) -> Iterator[bytes]:
    """The body of a multipart/related message whose parts are the files ``paths``,
    in chunks, each file read as it is sent."""
    head, end = _framing(boundary, content_type)
    for path in paths:
        yield head
        with open(path, "rb") as fh:
            while chunk := fh.read(WRITE_CHUNK):
                yield chunk
        yield b"\r\n"
    yield end


def spool_parts(chunks: Iterable[bytes], boundary: str, *, max_bytes: int | None = None,
                tmp_dir: str | Path | None = None, prefix: str = "part-") -> list[Part]:
    """Read a multipart body from ``chunks``, each part's body into its own temporary
    file (which the caller then owns). On any error every file written is removed."""
    parts: list[Part] = []
    out: IO[bytes] | None = None
    try:
        for event in _events(chunks, boundary, max_bytes):
            if isinstance(event, MultipartSegment):
                fd, name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=tmp_dir)
                out = os.fdopen(fd, "wb")
                parts.append(_part(event, path=Path(name)))
            elif event is None:
                out.close()
                out = None
            else:
                out.write(event)
        return parts
    except BaseException:
        if out is not None:
            out.close()
        discard(parts)
        raise


def read_parts(chunks: Iterable[bytes] | bytes, boundary: str, *, max_bytes: int | None = None) -> list[Part]:
    """Read a multipart body (``chunks``, or the whole body as bytes) into memory."""
    if isinstance(chunks, (bytes, bytearray)):
        chunks = [bytes(chunks)]
    parts: list[Part] = []
    body: list[bytes] = []
    for event in _events(chunks, boundary, max_bytes):
        if isinstance(event, MultipartSegment):
            parts.append(_part(event))
            body = []
        elif event is None:
            parts[-1].data = b"".join(body)
        else:
            body.append(bytes(event))
    return parts


def discard(parts: Iterable[Part]) -> None:
    """Remove the temporary files of spooled parts."""
    for part in parts:
        if part.path is not None:
            part.path.unlink(missing_ok=True)


class _RelatedParser(PushMultipartParser):
    """``multipart``'s push parser for multipart/related: the stock one insists on the
    Content-Disposition of multipart/form-data; ``_create_segment`` is the documented
    hook for other multipart types."""

    def _create_segment(self, headerlist):
        return MultipartSegment(headerlist)


def _events(chunks: Iterable[bytes], boundary: str, max_bytes: int | None):
    """The parser's events (a MultipartSegment, body bytes, None at a part's end) for
    the whole body; raises when the body ends before its closing delimiter."""
    parser = _RelatedParser(_checked(boundary), max_header_count=MAX_HEADER_COUNT)
    total = 0
    for chunk in chunks:
        if not chunk:
            continue  # an empty chunk would tell the parser the body has ended
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise MultipartTooLarge(max_bytes)
        try:
            yield from parser.parse(chunk)
        except MultipartError as exc:
            raise MalformedMultipart(f"malformed multipart body after {total} bytes: {exc}") from None
    try:
        parser.close()
    except MultipartError:
        raise MalformedMultipart(f"the multipart body ended after {total} bytes, before its closing delimiter"
                                 " (truncated, or not framed with the boundary given)") from None


def _part(segment: MultipartSegment, path: Path | None = None) -> Part:
    return Part(headers={name.lower(): value for name, value in segment.headerlist},
                content_type=segment.content_type, path=path)


def _checked(boundary: str) -> str:
    if not _BOUNDARY.match(boundary):
        raise MalformedMultipart(f"not a multipart boundary (RFC 2046 5.1.1): {boundary[:100]!r}")
    return boundary
