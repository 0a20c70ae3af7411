"""Writing a morphed instance by splicing the bytes of its source file.

A morph pass changes a few header elements; re-encoding the whole dataset with pydicom
(``write_instance``) costs most of the morph stage. :func:`write_spliced` instead walks
the top-level element headers of the source file (the walker of
:func:`shared.dicom.io.check_complete`, PS3.5 section 7.1 data element encoding,
section 7.5 nested items walked and checked), copies the byte range of every
top-level element that is still exactly what was read, Pixel Data included and never
decoded, and encodes with pydicom's own ``write_data_element`` only the top-level
elements that changed, were added (in ascending tag order, PS3.5 section 7.1: "Data
Elements in a Data Set shall be ordered by increasing Data Element Tag Number") or are
left out because they were removed. A change anywhere inside a sequence re-encodes that
whole top-level sequence element (PS3.5 section 7.5). The file meta is encoded by pydicom
(``write_file_meta_info``) with the Media Storage SOP Class/Instance UIDs taken from the
dataset and a recomputed group length (PS3.10 section 7.1).

The result is what ``write_instance`` writes (checked element by element in
``tests/unit/test_splice.py``; in practice byte for byte), and None whenever the fast
path does not apply, so the caller falls back to ``write_instance``.

Which elements changed is not taken on trust: pydicom keeps an element it has not
converted as the ``RawDataElement`` it read, with the file offset of its value. An
element is copied only if it is such a raw element whose offset, length and bytes are
those of the source element at that place; every other element present in both is
re-encoded and compared with its source bytes. A change the caller did not report
cannot be lost.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from pathlib import Path

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info

from shared.dicom.io import part10_layout, top_level_spans
from shared.errors import Unprocessable

__all__ = ["write_spliced", "splice_chunks"]

log = logging.getLogger(__name__)

_PIXEL_DATA = 0x7FE00010
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNDEFINED = 0xFFFFFFFF


def write_spliced(src_path: Path, ds: Dataset, changed_top_level_tags: Collection[int] | None,
                  out_path: Path, *, data: bytes | None = None, hashed: bool = True) -> str | None:
    """Write ``ds`` (read from ``src_path`` with pydicom, then changed in place) to
    ``out_path`` by copying the source's bytes for every unchanged top-level element;
    return the sha256 of the written file, hashed while writing (with ``hashed=False``,
    not hashed: an empty string).

    ``data``: the source file's bytes, if the caller has read them already.

    ``changed_top_level_tags``: tags the caller knows changed (they are re-encoded);
    None or incomplete is fine, as every element that is not provably the source's
    untouched bytes is re-encoded anyway (see the module docstring).

    Returns None, writing nothing, when the fast path does not apply and the caller
    should use :func:`shared.dicom.io.write_instance`: a deflated or unknown transfer
    syntax; no preamble or incomplete file meta; a dataset not decoded from this file
    in its own transfer syntax; Specific Character Set changed; Pixel Data gone or
    re-encoded differently; a source whose structure or tag order is broken; any
    element pydicom cannot encode."""
    try:
        chunks = splice_chunks(Path(src_path), ds, changed_top_level_tags, data=data)
    except Exception:  # noqa: BLE001 - a fast path: never the reason a morph fails
        log.warning("splice of %s failed; writing with pydicom", src_path, exc_info=True)
        return None
    if chunks is None:
        return None
    digest = hashlib.sha256() if hashed else None
    with open(out_path, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            if digest is not None:
                digest.update(chunk)
    return digest.hexdigest() if digest is not None else ""


def splice_chunks(src_path: Path, ds: Dataset, changed_top_level_tags: Collection[int] | None = None,
                  *, data: bytes | None = None) -> list[bytes | memoryview] | None:
    """The output file of :func:`write_spliced` as a list of byte chunks (slices of the
    source file and newly encoded elements), or None when the fast path does not
    apply."""
    if data is None:
        data = src_path.read_bytes()
    offset, syntax = part10_layout(data)
    if offset is None or syntax.is_deflated or syntax.is_private or not syntax.is_transfer_syntax:
        return None
    meta = getattr(ds, "file_meta", None)
    preamble = getattr(ds, "preamble", None)
    # the same condition under which write_instance writes the file meta as it is
    if (meta is None or preamble is None or len(preamble) != 128
            or "FileMetaInformationVersion" not in meta or "FileMetaInformationGroupLength" not in meta
            or meta.get("TransferSyntaxUID") != syntax):
        return None
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    # pydicom re-encodes every element when the encoding or character set differs
    # from the one read (filewriter.write_dataset): not a splice
    if tuple(ds.original_encoding) != (implicit, little):
        return None
    try:
        if ds.original_character_set != ds._character_set:
            return None
        sop_instance, sop_class = ds.SOPInstanceUID, ds.SOPClassUID
    except (AttributeError, LookupError, ValueError):
        return None
    try:
        spans = top_level_spans(data, offset, syntax)
    except Unprocessable:
        return None

    # file meta as write_instance writes it (group length recomputed by pydicom)
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.MediaStorageSOPClassUID = sop_class
    meta_buffer = DicomBytesIO()
    meta_buffer.is_little_endian, meta_buffer.is_implicit_VR = True, False
    try:
        write_file_meta_info(meta_buffer, meta, enforce_standard=False)
    except (ValueError, TypeError, AttributeError):
        return None
    chunks: list[bytes | memoryview] = [bytes(preamble), b"DICM", meta_buffer.getvalue()]

    # tag -> DataElement | RawDataElement, read without converting; int keys, as a
    # lookup by int in a dict keyed by BaseTag calls BaseTag.__eq__ in Python
    elements = {int(tag): elem for tag, elem in ds._dict.items()}
    forced = frozenset(int(t) for t in changed_top_level_tags or ())
    encodings = ds.get("SpecificCharacterSet", default_encoding)
    source_tags = set()
    previous = -1
    for span in spans:
        tag = span[0]
        if tag <= previous:  # out of order or repeated: pydicom would sort and merge
            return None
        previous = tag
        source_tags.add(tag)
    added = sorted(tag for tag in elements if tag not in source_tags)
    if _PIXEL_DATA in source_tags and _PIXEL_DATA not in elements:
        return None  # read without pixel data (or it was removed): never write that by splicing

    view = memoryview(data)
    run_start = run_end = -1  # the source range being copied

    def emit(encoded: bytes) -> None:
        nonlocal run_start, run_end
        if run_start >= 0:
            chunks.append(view[run_start:run_end])
            run_start = run_end = -1
        if encoded:
            chunks.append(encoded)

    next_added = 0
    for tag, start, value, length, end in spans:
        while next_added < len(added) and added[next_added] < tag:
            encoded = _encode_new(elements[added[next_added]], added[next_added], implicit, little, encodings)
            if encoded is None:
                return None
            emit(encoded)
            next_added += 1
        elem = elements.get(tag)
        if elem is None or _is_group_length(tag):
            # removed; pydicom never writes a retired group length (PS3.5 section 7.2)
            if tag == _SPECIFIC_CHARACTER_SET:
                return None
            emit(b"")
            continue
        if type(elem) is RawDataElement and tag not in forced:
            # what pydicom read at this place, never converted: the source bytes
            # a value pydicom deferred (None with a length) is checked by position only
            raw_value = elem.value
            if elem.value_tell != value or elem.length != length or (
                    raw_value is not None and not data.startswith(raw_value, value)):
                return None  # the walk and pydicom's read disagree: do not guess
            same = True
        else:
            encoded = _encode(elem, implicit, little, encodings)
            if encoded is None:
                return None
            same = encoded == view[start:end]
            if not same and tag in (_SPECIFIC_CHARACTER_SET, _PIXEL_DATA):
                return None
        if same:
            if tag == _PIXEL_DATA and (length == _UNDEFINED) != bool(syntax.is_compressed):
                return None  # pydicom would rewrite the pixel data's length (PS3.5 A.4)
            if run_start >= 0 and run_end == start:
                run_end = end
            else:
                emit(b"")
                run_start, run_end = start, end
        else:
            emit(encoded)
    for tag in added[next_added:]:
        encoded = _encode_new(elements[tag], tag, implicit, little, encodings)
        if encoded is None:
            return None
        emit(encoded)
    emit(b"")
    return chunks


def _is_group_length(tag: int) -> bool:
    return tag & 0xFFFF == 0 and tag >> 16 > 6


def _encode_new(elem, tag: int, implicit: bool, little: bool, encodings) -> bytes | None:
    if tag == _SPECIFIC_CHARACTER_SET or tag == _PIXEL_DATA:
        return None
    if _is_group_length(tag):
        return b""  # not written, as pydicom does not
    return _encode(elem, implicit, little, encodings)


def _encode(elem, implicit: bool, little: bool, encodings) -> bytes | None:
    """One element as pydicom's writer encodes it (PS3.5 section 7.1.2 explicit /
    7.1.3 implicit VR; a sequence with its items, 7.5), or None if it cannot."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little, implicit
    try:
        write_data_element(buffer, elem, encodings)
    except Exception:  # noqa: BLE001 - any failure means: let write_instance decide
        return None
    return buffer.getvalue()
