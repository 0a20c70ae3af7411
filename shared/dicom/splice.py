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

:func:`write_morphed` is what morph calls: the splice where it applies, else pydicom
writes every element except the large binary values it never read (Pixel Data ...),
whose bytes are copied from the source at their place (:func:`reencode_chunks`). Either
way values are copied file to file in chunks (:func:`shared.dicom.io.copy_range`): the
memory a write needs is the header's, whatever the instance's size.

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
import struct
from collections.abc import Collection, Iterable
from pathlib import Path

from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info

from shared.dicom.io import Buffer, copy_range, mapped, part10_layout, top_level_spans, write_instance
from shared.errors import Unprocessable
from shared.logs import describe_error, size_text

__all__ = ["write_morphed", "write_spliced", "splice_chunks", "reencode_chunks", "MAX_VALUES_IN_MEMORY"]

# Encoded bytes, or the byte range (start, end) of the source file to copy.
Chunk = bytes | tuple[int, int]
# The most value bytes a write may read into memory when they cannot be copied from the
# source by position (another encoding, a deflated source): beyond it, the instance is
# refused rather than a process sized for its header running out of memory.
MAX_VALUES_IN_MEMORY = 256 * 1024 * 1024
# Value representations of binary values: their bytes do not depend on the character set.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

log = logging.getLogger(__name__)

_PIXEL_DATA = 0x7FE00010
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNDEFINED = 0xFFFFFFFF


def write_morphed(src_path: Path, ds: Dataset, out_path: Path, *, data: Buffer | None = None,
                  hashed: bool = True) -> str:
    """Write ``ds`` (read from ``src_path``, then changed by morph) to ``out_path``,
    copying the source's bytes wherever they are still the dataset's; return the
    written file's sha256 (or, with ``hashed=False``, an empty string).

    Raises :class:`Unprocessable` when pydicom cannot encode the changed dataset (a
    value that does not fit its VR: the input, which retrying cannot change), or when
    writing it would read more than :data:`MAX_VALUES_IN_MEMORY` of values into memory."""
    if data is None:
        data = mapped(src_path)
    try:
        chunks = _fast(splice_chunks, src_path, ds, None, data=data)
        if chunks is None:
            chunks = _fast(reencode_chunks, src_path, ds, data=data)
        if chunks is not None:
            return write_chunks(src_path, chunks, out_path, hashed=hashed)
        _refuse_large_reads(ds, data)
        return write_instance(ds, out_path, hashed=hashed)
    except Unprocessable:
        raise
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        raise Unprocessable(f"the changed instance cannot be encoded: {describe_error(exc)}") from None


def write_chunks(src_path: Path, chunks: Iterable[Chunk], out_path: Path, *, hashed: bool = True) -> str:
    """Write ``chunks`` to ``out_path``, source ranges copied in bounded pieces; return
    the sha256 of what was written (hashed while writing), or with ``hashed=False`` an
    empty string."""
    digest = hashlib.sha256() if hashed else None
    with open(src_path, "rb") as src, open(out_path, "wb") as fh:
        for chunk in chunks:
            for piece in (copy_range(src, *chunk) if isinstance(chunk, tuple) else (chunk,)):
                fh.write(piece)
                if digest is not None:
                    digest.update(piece)
    return digest.hexdigest() if digest is not None else ""


def _fast(build, *args, **kwargs) -> list[Chunk] | None:
    """``build``'s chunks, or None when it fails: a way of copying bytes (relying on
    pydicom's ``Dataset._dict``, pinned) is never the reason a morph fails. A refusal
    (:class:`Unprocessable`) is the instance's, and stands."""
    try:
        return build(*args, **kwargs)
    except Unprocessable:
        raise
    except Exception:  # noqa: BLE001 - see above
        log.warning("%s of %s failed; writing with pydicom", build.__name__, args[0], exc_info=True)
        return None


def write_spliced(src_path: Path, ds: Dataset, changed_top_level_tags: Collection[int] | None,
                  out_path: Path, *, data: Buffer | None = None, hashed: bool = True) -> str | None:
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
    chunks = _fast(splice_chunks, Path(src_path), ds, changed_top_level_tags, data=data)
    if chunks is None:
        return None
    return write_chunks(src_path, chunks, out_path, hashed=hashed)


def splice_chunks(src_path: Path, ds: Dataset, changed_top_level_tags: Collection[int] | None = None,
                  *, data: Buffer | None = None) -> list[Chunk] | None:
    """The output file of :func:`write_spliced` as a list of :data:`Chunk` (ranges of
    the source file and newly encoded elements), or None when the fast path does not
    apply."""
    if data is None:
        data = mapped(src_path)
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
    chunks: list[Chunk] = [bytes(preamble), b"DICM", meta_buffer.getvalue()]

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

    run_start = run_end = -1  # the source range being copied

    def emit(encoded: bytes) -> None:
        nonlocal run_start, run_end
        if run_start >= 0:
            chunks.append((run_start, run_end))
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
                    raw_value is not None and data[value:value + len(raw_value)] != raw_value):
                return None  # the walk and pydicom's read disagree: do not guess
            same = True
        else:
            encoded = _encode(elem, implicit, little, encodings)
            if encoded is None:
                return None
            same = end - start == len(encoded) and encoded == data[start:end]
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


def reencode_chunks(src_path: Path, ds: Dataset, *, data: Buffer | None = None) -> list[Chunk] | None:
    """``ds`` as ``write_instance`` writes it, except that the binary values pydicom
    deferred and never read (Pixel Data, overlays, ...: :data:`DEFER_BYTES` or more)
    are copied from the source at their place instead of being read into memory; None
    when there are none, or when their source bytes would not be the output's (another
    encoding, a deflated source, a source pydicom and the walk disagree on).

    Binary values are copied only: a deferred text value or sequence is read (pydicom
    re-encodes text when the character set changes), costing its own size."""
    deferred = {tag: elem for tag, elem in _deferred(ds).items() if _is_binary(tag, elem.VR)}
    if not deferred:
        return None
    if data is None:
        data = mapped(src_path)
    offset, syntax = part10_layout(data)
    meta = getattr(ds, "file_meta", None)
    if (offset is None or syntax.is_deflated or meta is None or meta.get("TransferSyntaxUID") != syntax
            or tuple(ds.original_encoding) != (syntax.is_implicit_VR, syntax.is_little_endian)):
        return None
    source = {span[0]: span for span in top_level_spans(data, offset, syntax)}
    for tag, elem in deferred.items():
        span = source.get(int(tag))
        if span is None or span[2] != elem.value_tell or span[3] != elem.length:
            return None  # the walk and pydicom's read disagree: do not guess
    for tag in deferred:
        del ds._dict[tag]  # pydicom writes what is left; the dataset is restored below
    try:
        _refuse_large_reads(ds, data)
        buffer = DicomBytesIO()
        complete = ds.preamble is not None and "FileMetaInformationVersion" in meta
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(buffer, enforce_file_format=not complete)
    finally:
        ds._dict.update(deferred)
    written = buffer.getvalue()
    written_offset, _ = part10_layout(written)
    chunks: list[Chunk] = [written[:written_offset]]
    pending = sorted(int(tag) for tag in deferred)
    for tag, start, _, _, end in top_level_spans(written, written_offset, syntax):
        while pending and pending[0] < tag:
            span = source[pending.pop(0)]
            chunks.append((span[1], span[4]))
        chunks.append(written[start:end])
    chunks += [(source[tag][1], source[tag][4]) for tag in pending]
    return chunks


def _refuse_large_reads(ds: Dataset, data: Buffer) -> None:
    """Raise :class:`Unprocessable` if pydicom, writing ``ds``, would read more than
    :data:`MAX_VALUES_IN_MEMORY` of values it deferred."""
    unread = _unread_bytes(ds, data)
    if unread > MAX_VALUES_IN_MEMORY:
        raise Unprocessable(
            f"the changed instance cannot be written without reading {size_text(unread)} of its values into "
            f"memory (they cannot be copied from the received file as they are), more than the "
            f"{size_text(MAX_VALUES_IN_MEMORY)} allowed")


def _unread_bytes(ds: Dataset, data: Buffer) -> int:
    """How many bytes of values pydicom would read to write ``ds`` (an undefined
    length measured by the walk; the whole file if it cannot be walked)."""
    deferred = _deferred(ds)
    if not any(elem.length == _UNDEFINED for elem in deferred.values()):
        return sum(elem.length for elem in deferred.values())
    offset, syntax = part10_layout(data)
    try:
        spans = {span[0]: span for span in top_level_spans(data, offset, syntax)}
    except (Unprocessable, ValueError, TypeError, AttributeError):
        return len(data)
    return sum(spans[int(tag)][4] - spans[int(tag)][2] if int(tag) in spans else len(data) for tag in deferred)


def _is_binary(tag: int, vr: str | None) -> bool:
    """Whether the element's value is binary (its VR as read; for implicit VR, every VR
    the data dictionary allows, as in "OB or OW", and UN for an unknown tag)."""
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return True  # unknown (private): pydicom reads and writes it as UN, bytes as they are
    return all(v in _BINARY_VRS for v in vr.split(" or "))


def _deferred(ds: Dataset) -> dict:
    """Top-level elements whose value pydicom has not read (deferred: ``value`` None),
    by their tag as the dataset keys them."""
    return {tag: elem for tag, elem in ds._dict.items()
            if type(elem) is RawDataElement and elem.value is None and elem.length}


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
