"""Reading and writing instances without touching pixel data.

pydicom keeps Pixel Data as the encoded bytes unless it is accessed through
``pixel_array``; nothing here does, so pixel data is carried through byte for byte
and the transfer syntax of the file is kept (PS3.10 section 7.1 file meta)."""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom import hooks as pydicom_hooks
from pydicom.datadict import DicomDictionary, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pydicom.valuerep import STANDARD_VR

from shared.errors import Unprocessable
from shared.logs import describe_error, size_text

REQUIRED = ("SOPClassUID", "SOPInstanceUID")
# values at least this long stay in the source file until used (pydicom defer_size)
DEFER_BYTES = 64 * 1024
# values are copied and hashed through a buffer of this size, never whole
COPY_CHUNK = 1024 * 1024
# the most a deflated data set may inflate to: it is parsed in memory (PS3.5 A.5)
MAX_INFLATED_BYTES = 256 * 1024 * 1024

# the bytes-like objects instances are read from: a mapped file, or bytes in memory
Buffer = bytes | bytearray | memoryview | mmap.mmap


def mapped(path: Path | str) -> Buffer:
    """The file's bytes for reading in place: a read-only memory map, so only the pages
    actually read (element headers) are loaded, and an instance of any size costs
    its header in memory. Values are copied out with :func:`copy_range`, never through
    the map. The map closes when the last reference to it goes (a dataset parsed from
    it keeps it for its deferred values); it stays valid if the file is removed.

    A file of :data:`COPY_CHUNK` or less is read whole instead: as cheap, and pages
    that were mapped are not always let go when the last reader asks the page cache to
    drop them (``shared.adapters.files.drop_cached``)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= COPY_CHUNK:
            return fh.read()
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    data.madvise(mmap.MADV_RANDOM)  # header reads jump over values: no read-ahead
    return data


def unmap(data: Buffer) -> None:
    """Close a map from :func:`mapped` now rather than when its last reference goes
    (a page that is mapped stays in memory). Values of a dataset parsed from it that
    were never read cannot be read afterwards."""
    if isinstance(data, mmap.mmap):
        data.close()


def copy_range(source: BinaryIO, start: int, end: int) -> Iterator[memoryview]:
    """The bytes ``start:end`` of ``source`` in chunks of at most :data:`COPY_CHUNK`,
    read into one reused buffer (use each chunk before asking for the next)."""
    buffer = memoryview(bytearray(min(COPY_CHUNK, max(end - start, 0))))
    source.seek(start)
    while start < end:
        n = source.readinto(buffer[:min(len(buffer), end - start)])
        if not n:
            raise Unprocessable("truncated: the file ended while it was being copied")
        yield buffer[:n]
        start += n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in copy_range(fh, 0, os.fstat(fh.fileno()).st_size):
            h.update(chunk)
    return h.hexdigest()


_UNDEFINED = 0xFFFFFFFF


# Explicit VR: these VRs have 2 reserved bytes and a 32-bit length (PS3.5 section 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
# VRs of fixed-size binary values: a value length must be a multiple of the size.
_FIXED_SIZE = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"FD": 8, b"AT": 4, b"SV": 8, b"UV": 8,
               b"OW": 2, b"OF": 4, b"OD": 8, b"OL": 4, b"OV": 8}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
# The value representations of PS3.5 section 6.2, as encoded in an explicit VR header.
_VALID_VRS = frozenset(vr.value.encode("ascii") for vr in STANDARD_VR)

# One encoded element: (tag, header start, value start, length field, end). The length
# field is 0xFFFFFFFF for an undefined length; ``end`` is then after the delimiter.
Span = tuple[int, int, int, int, int]


def _invalid_vr(group: int, element: int, vr: bytes) -> Unprocessable:
    reason = f"element ({group:04X},{element:04X}) has an invalid value representation {vr.decode('latin-1')!r} (PS3.5 6.2)"
    if 0 in vr:
        # what an implicit VR dataset under an explicit VR transfer syntax looks like: the
        # "VR" is half of a 32-bit length, mostly zero bytes
        reason += "; the dataset may be encoded in implicit VR although its transfer syntax is explicit VR"
    return Unprocessable(reason)


class _Walker:
    """Walks the encoded dataset and checks its structure without decoding values
    (PS3.5 section 7: data elements; 7.5: nesting of data sets; A.4: encapsulated
    pixel data). Every value must fit in what remains, every undefined length must
    end in its delimiter, sequence items of defined length must hold whole elements,
    fixed-size binary values (US, UL, FD, ...) must be a whole number of values, and an
    explicit VR must be one PS3.5 section 6.2 defines (nobody downstream can read a
    value whose VR is unknown; its length field may not even be where we assume)."""

    def __init__(self, data: Buffer, implicit: bool, little: bool):
        self.data = data
        self.implicit = implicit
        order = "<" if little else ">"
        self.tag = struct.Struct(order + "HH")
        self.explicit_header = struct.Struct(order + "HH2sH")
        self.u32 = struct.Struct(order + "L")

    def _corrupt(self, message: str) -> Unprocessable:
        return Unprocessable(f"truncated or corrupt: {message}")

    def elements(self, pos: int, end: int, *, implicit: bool, in_item: bool = False,
                 spans: list[Span] | None = None) -> int:
        """Elements from ``pos`` to ``end``; in an undefined-length item, up to and
        including its Item Delimitation Item. Returns the position after them.

        With ``spans`` (a list), one :data:`Span` per element walked at this level is
        appended to it, in file order: where its header starts, where its value starts,
        its length field as encoded, and where it ends (after its delimiter, for an
        undefined length). Nested elements are checked but not listed."""
        data, tag_s, explicit_s, u32 = self.data, self.tag, self.explicit_header, self.u32
        long_vrs, fixed, dictionary, valid_vrs = _LONG_VRS, _FIXED_SIZE, DicomDictionary, _VALID_VRS
        while pos < end:
            start = pos
            if end - pos < 8:
                raise self._corrupt("the file ends inside a data element header")
            if implicit:
                group, element = tag_s.unpack_from(data, pos)
                length = u32.unpack_from(data, pos + 4)[0]
                entry = dictionary.get((group << 16) | element)
                vr = entry[0].encode() if entry else None
            else:
                group, element, vr, length = explicit_s.unpack_from(data, pos)
            if group == 0xFFFE:
                if in_item and element == _ITEM_END:
                    return pos + 8
                raise self._corrupt(f"unexpected ({group:04X},{element:04X}) at byte {pos}")
            if implicit:
                pos += 8
            elif vr in long_vrs:
                if end - pos < 12:
                    raise self._corrupt("the file ends inside a data element header")
                length = u32.unpack_from(data, pos + 8)[0]
                pos += 12
            elif vr in valid_vrs:
                pos += 8
            else:
                raise _invalid_vr(group, element, vr)
            if length == _UNDEFINED:
                value = pos
                # a sequence, or encapsulated pixel data: fragments (PS3.5 A.4)
                if vr == b"UN":
                    # a sequence in an undefined-length UN is implicit VR little endian (PS3.5 6.2.2)
                    pos = _Walker(data, implicit=True, little=True).items(pos, end, fragments=False, delimited=True)
                else:
                    pos = self.items(pos, end, fragments=(vr != b"SQ" and not implicit), delimited=True)
                if spans is not None:
                    spans.append(((group << 16) | element, start, value, length, pos))
                continue
            if length > end - pos:
                raise self._corrupt(
                    f"element ({group:04X},{element:04X}) declares {length} bytes, only {max(end - pos, 0)} remain")
            if vr == b"SQ":
                self.items(pos, pos + length, fragments=False, delimited=False)
            elif vr in fixed and length % fixed[vr]:
                raise self._corrupt(f"element ({group:04X},{element:04X}) has {length} bytes, not a whole number "
                                    f"of {vr.decode()} values")
            pos += length
            if spans is not None:
                spans.append(((group << 16) | element, start, pos - length, length, pos))
        if in_item:
            raise self._corrupt("a sequence item ends before its delimiter")
        return pos

    def items(self, pos: int, end: int, *, fragments: bool, delimited: bool) -> int:
        """Items of a sequence (or pixel data fragments) from ``pos``; with
        ``delimited``, up to and including the Sequence Delimitation Item."""
        data, tag_s, u32 = self.data, self.tag, self.u32
        while pos < end:
            if end - pos < 8:
                raise self._corrupt("the file ends inside an item header")
            group, element = tag_s.unpack_from(data, pos)
            length = u32.unpack_from(data, pos + 4)[0]
            pos += 8
            if group == 0xFFFE and element == _SEQUENCE_END and delimited:
                return pos
            if group != 0xFFFE or element != _ITEM:
                raise self._corrupt(f"expected a sequence item, found ({group:04X},{element:04X})")
            if length == _UNDEFINED:
                if fragments:
                    raise self._corrupt("a pixel data fragment has undefined length")
                pos = self.elements(pos, end, implicit=self.implicit, in_item=True)
                continue
            if length > end - pos:
                raise self._corrupt(f"an item declares {length} bytes, only {end - pos} remain")
            if not fragments:
                self.elements(pos, pos + length, implicit=self.implicit)
            pos += length
        if delimited:
            raise self._corrupt("the file ends before a sequence delimiter")
        return pos


_META_HEADER = struct.Struct("<HH2sHL")  # tag, VR, 16-bit length; 32-bit length for OB/UN...


def part10_layout(data: Buffer) -> tuple[int | None, UID | None]:
    """Where the dataset starts and its transfer syntax, from a Part 10 file's meta
    group (PS3.10 section 7.1: preamble, "DICM", group 0002 in explicit VR little
    endian headed by its group length). (None, None) for anything else."""
    if data[128:132] != b"DICM" or len(data) < 144:
        return None, None
    group, element, vr, _, group_length = _META_HEADER.unpack_from(data, 132)
    if (group, element, vr) != (2, 0, b"UL"):
        return None, None
    end = 144 + group_length
    pos, syntax = 144, None
    while pos + 8 <= end and pos + 8 <= len(data):
        if pos + 12 > len(data):
            return None, None
        group, element, vr, length, long_length = _META_HEADER.unpack_from(data, pos)
        if group != 2:
            return None, None
        if vr in _LONG_VRS:
            length, pos = long_length, pos + 12
        else:
            pos += 8
        if element == 0x0010:
            syntax = UID(data[pos:pos + length].rstrip(b"\0 ").decode("ascii", "replace"))
        pos += length
    if syntax is None or pos != end:
        return None, None
    return end, syntax


def top_level_spans(data: Buffer, offset: int, syntax: UID) -> list[Span]:
    """The top-level elements of the (not deflated) dataset that starts at ``offset``,
    as :data:`Span` s in file order, checked as :func:`check_complete` checks them
    (PS3.5 section 7.1 element encoding; 7.5 nested items are walked and checked,
    not listed). Raises :class:`Unprocessable` for a broken structure."""
    if syntax.is_deflated:
        raise ValueError("a deflated dataset has no byte offsets in the file")
    spans: list[Span] = []
    _Walker(data, syntax.is_implicit_VR, syntax.is_little_endian).elements(
        offset, len(data), implicit=syntax.is_implicit_VR, spans=spans)
    return spans


def _check_part10_prefix(head: bytes) -> None:
    """Raise :class:`Unprocessable` unless ``head`` starts like a Part 10 file: a
    128-byte preamble and the "DICM" prefix (PS3.10 section 7.1)."""
    if len(head) < 132:
        raise Unprocessable(f"not a DICOM Part 10 file: only {len(head)} bytes, too short for the 128-byte "
                            "preamble and 'DICM' prefix (PS3.10 7.1)")
    if head[128:132] != b"DICM":
        raise Unprocessable("not a DICOM Part 10 file: no 'DICM' prefix at byte 128 (PS3.10 7.1)")


def check_complete(path: Path, data: Buffer | None = None) -> None:
    """Raise :class:`Unprocessable` if the file ends inside a data element or its
    structure is broken.

    pydicom reads a short last value without complaint (and only warns at a missing
    sequence delimiter), so a file cut off in transfer would pass as valid. This walks
    the element headers (PS3.5 section 7.1), nested sequences and items (7.5) included,
    without decoding or copying values: each value must be as long as its header says,
    undefined-length values must end in their delimiter, and no partial element header
    may be left at the end. A cut exactly between two top-level elements is
    syntactically a shorter valid dataset and is left to IOD validation.

    ``data``: the file's bytes (:func:`mapped`), if the caller has them. A deflated
    data set is inflated in memory, up to :data:`MAX_INFLATED_BYTES`."""
    if data is None:
        data = mapped(path)
    _check_part10_prefix(data)
    offset, syntax = part10_layout(data)
    if offset is None:  # unusual file meta: let pydicom read it
        meta = read_file_meta_info(path)
        offset = 132 + 12 + int(meta.FileMetaInformationGroupLength)
        syntax = UID(meta.TransferSyntaxUID)
    if syntax.is_deflated:
        data, offset = inflate(memoryview(data)[offset:]), 0
    if offset > len(data):
        raise Unprocessable("truncated or corrupt: the file ends inside its file meta information")
    _Walker(data, syntax.is_implicit_VR, syntax.is_little_endian).elements(
        offset, len(data), implicit=syntax.is_implicit_VR)


def inflate(deflated: Buffer) -> bytes:
    """A deflated data set (PS3.5 A.5), inflated; raises :class:`Unprocessable` if it
    is corrupt or would inflate beyond :data:`MAX_INFLATED_BYTES`."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(deflated, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise Unprocessable(f"deflated dataset is corrupt: {exc}") from None
    if len(data) > MAX_INFLATED_BYTES:
        raise Unprocessable(f"the deflated data set inflates to more than {size_text(MAX_INFLATED_BYTES)}, the most "
                            "this router inflates in memory; send it in a transfer syntax that is not deflated")
    if not inflater.eof:
        raise Unprocessable("truncated or corrupt: the deflated dataset ends before its end marker")
    return data


class UndecodableValue(Unprocessable, ValueError):
    """An element's value cannot be decoded for its VR (an unknown VR, a length that is
    no whole number of values, ...). pydicom decodes values when they are first used,
    so this is raised there: by the rules in match, by morph, by a name template. It
    is the input's fault: retrying cannot help, so the instance is quarantined. (A
    ValueError too, for code that catches pydicom's.)"""


def _decode_value(raw, data: dict, **kwargs) -> None:
    """pydicom's ``raw_element_value`` hook, raising :class:`UndecodableValue` (naming
    the element, never its value) instead of whatever the conversion raised."""
    try:
        _pydicom_decode_value(raw, data, **kwargs)
    except Exception as exc:
        keyword = keyword_for_tag(raw.tag)
        raise UndecodableValue(
            f"element {raw.tag}{f' {keyword}' if keyword else ''} cannot be decoded as VR {data.get('VR')!s:.8} "
            f"(PS3.5 6.2; {type(exc).__name__})") from None


_pydicom_decode_value = pydicom_hooks.raw_element_value
pydicom_hooks.hooks.register_callback("raw_element_value", _decode_value)


def read_instance(path: Path, *, stop_before_pixels: bool = False, check: bool = True,
                  data: Buffer | None = None) -> Dataset:
    """Parse a Part 10 file; anything that is not a complete DICOM file raises
    :class:`Unprocessable` with the reason.

    The full read checks the encoded structure first (:func:`check_complete`, every
    nesting level) and then lets pydicom parse it; element values are converted
    lazily, on first access, as pydicom does (converting all of them up front cost more
    than reading and writing the file; what can break the parse is the structure,
    which is checked). With ``stop_before_pixels`` (no structure check), every element
    is converted so a corrupt file fails here. ``check=False`` skips the structure
    check for a file already checked (an immutable ingest object).

    A full read parses the mapped file (:func:`mapped`; ``data`` if the caller has
    it already): pydicom asks a file for its position before every element, and on a
    file that is a system call each time, on a map it is not. Values of
    ``DEFER_BYTES`` or more (Pixel Data) are not read (pydicom's ``defer_size``): they
    stay in the file until first used, and a splice never uses them, so the dataset
    costs the header's memory whatever the instance's size."""
    try:
        if stop_before_pixels:
            with open(path, "rb") as fh:
                _check_part10_prefix(fh.read(132))
            source = path
        else:
            if data is None:
                data = mapped(path)
            if check:
                check_complete(path, data)
            else:
                _check_part10_prefix(data)
            source = data if isinstance(data, mmap.mmap) else BytesIO(data)
            source.seek(0)
        ds = dcmread(source, stop_before_pixels=stop_before_pixels,
                     defer_size=None if stop_before_pixels else DEFER_BYTES)
        if stop_before_pixels:
            for _ in ds.iterall():
                pass
    except Unprocessable:
        raise
    except InvalidDicomError as exc:  # the prefix is checked above; this is pydicom's own judgement
        raise Unprocessable(f"not a DICOM Part 10 file: {exc}") from None
    except Exception as exc:  # pydicom raises many types for corrupt input; their messages may quote values
        raise Unprocessable(f"could not parse DICOM: {describe_error(exc)}") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise Unprocessable("file meta has no Transfer Syntax UID")
    missing = [kw for kw in REQUIRED if not ds.get(kw)]
    if missing:
        raise Unprocessable(f"missing required attribute(s): {', '.join(missing)}")
    return ds


def write_instance(ds: Dataset, path: Path, *, hashed: bool = True) -> str:
    """Write as a Part 10 file in the dataset's own transfer syntax, keeping the file
    meta consistent with the dataset; return the file's sha256 (read back from the page
    cache: measured as fast as hashing while writing, and simpler), or with
    ``hashed=False`` an empty string."""
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    # A dataset read from a Part 10 file with a preamble is written back as one as it
    # is; pydicom's enforce_file_format (a deep copy and re-check of the file meta,
    # ~8% of a 530 KB write) is needed only when something is missing.
    complete = ds.preamble is not None and "FileMetaInformationVersion" in ds.file_meta
    ds.save_as(path, enforce_file_format=not complete)
    return sha256_file(path) if hashed else ""


_ORIGINAL_ATTRIBUTES_SEQUENCE = 0x04000561
_ATTRIBUTE_MODIFICATION_DATETIME = 0x04000562
_DATA_SET_TRAILING_PADDING = 0xFFFCFFFC


def content_digest(source: Path | str | bytes, *, ignore_last_modification_time: bool = False) -> str:
    """The SHA-256 that says whether two copies of an instance are the same instance.

    It hashes the encoded data set, everything after the file meta (PS3.10 section 7.1),
    byte for byte in the transfer syntax as received, except what each hop may write
    its own way for the same data set:

    - the file meta, group 0002 (Source Application Entity Title, Implementation Class
      UID, ...);
    - Data Set Trailing Padding (FFFC,FFFC), which has no meaning and which senders may
      drop or change (PS3.10 section 7.2; dcmtk's storescu drops it);
    - with ``ignore_last_modification_time``, the Attribute Modification DateTime
      (0400,0562) of the last Original Attributes Sequence (0400,0561) item (PS3.3
      C.12.1.1.9): the item this router's morph pass added, timed when this copy was
      received, so a resend of the same data set under the same rules gets the same
      digest.

    The same data set re-encoded in another transfer syntax is another digest. A file
    without standard file meta is hashed whole; a deflated one after its file meta.

    ``source``: a file (its element headers are read in place, its values hashed in
    chunks: memory does not grow with its size) or the instance's bytes."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            return _content_digest(mapped(source), fh, ignore_last_modification_time)
    return _content_digest(source, BytesIO(source), ignore_last_modification_time)


def _content_digest(data: Buffer, reader: BinaryIO, modification_time: bool) -> str:
    offset, syntax = part10_layout(data)
    digest = hashlib.sha256()
    pos, skipped = offset or 0, []
    if offset is not None and not syntax.is_deflated:
        skipped = _unstable_ranges(data, offset, syntax, modification_time)
    for start, end in [*skipped, (len(data), len(data))]:
        for chunk in copy_range(reader, pos, start):
            digest.update(chunk)
        pos = end
    return digest.hexdigest()


def _unstable_ranges(data: Buffer, offset: int, syntax: UID, modification_time: bool) -> list[tuple[int, int]]:
    """Byte ranges (header included) :func:`content_digest` leaves out, in file order."""
    try:
        spans = top_level_spans(data, offset, syntax)
    except Unprocessable:
        return []  # a broken data set is hashed as it is
    ranges = []
    if modification_time:
        sequence = next((s for s in spans if s[0] == _ORIGINAL_ATTRIBUTES_SEQUENCE), None)
        element = sequence and _last_item_element(data, syntax, sequence, _ATTRIBUTE_MODIFICATION_DATETIME)
        if element:
            ranges.append((element[1], element[4]))
    if spans and spans[-1][0] == _DATA_SET_TRAILING_PADDING:
        ranges.append((spans[-1][1], spans[-1][4]))
    return ranges


def _last_item_element(data: Buffer, syntax: UID, sequence: Span, tag: int) -> Span | None:
    """The element ``tag`` of the last item of a top-level ``sequence`` (PS3.5 section
    7.5), or None."""
    _, _, pos, length, end = sequence
    if length == _UNDEFINED:
        end -= 8  # before the Sequence Delimitation Item
    walker = _Walker(data, syntax.is_implicit_VR, syntax.is_little_endian)
    last: list[Span] = []
    while pos + 8 <= end:
        item_length = walker.u32.unpack_from(data, pos + 4)[0]
        last = []
        if item_length == _UNDEFINED:
            pos = walker.elements(pos + 8, end, implicit=syntax.is_implicit_VR, in_item=True, spans=last)
        else:
            walker.elements(pos + 8, pos + 8 + item_length, implicit=syntax.is_implicit_VR, spans=last)
            pos += 8 + item_length
    return next((s for s in last if s[0] == tag), None)
