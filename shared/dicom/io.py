"""Reading and writing instances without touching pixel data.

pydicom keeps Pixel Data as the encoded bytes unless it is accessed through
``pixel_array``; nothing here does, so pixel data is carried through byte for byte
and the transfer syntax of the file is kept (PS3.10 section 7.1 file meta)."""

from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_file_meta_info
from pydicom.uid import UID

from shared.errors import Unprocessable

REQUIRED = ("SOPClassUID", "SOPInstanceUID")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


_UNDEFINED = 0xFFFFFFFF


def check_complete(path: Path) -> None:
    """Raise :class:`Unprocessable` if the file ends inside a data element.

    pydicom reads a short last value without complaint (and only warns at a missing
    sequence delimiter), so a file cut off in transfer would pass as valid. This walks
    the top-level elements (PS3.5 section 7.1) and checks each value is as long as its
    header says, that undefined-length values end in their delimiter, and that no
    partial element header is left at the end. A cut exactly between two elements is
    syntactically a shorter valid dataset and is left to IOD validation."""
    meta = read_file_meta_info(path)
    offset = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    syntax = UID(meta.TransferSyntaxUID)
    data = Path(path).read_bytes()[offset:]
    if syntax.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data)
        except zlib.error as exc:
            raise Unprocessable(f"deflated dataset is corrupt: {exc}") from None
        if not inflater.eof:
            raise Unprocessable("truncated or corrupt: the deflated dataset ends before its end marker")
    fp = io.BytesIO(data)
    end = 0
    try:
        for elem in data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian):
            if elem.length != _UNDEFINED and elem.value is not None and len(elem.value) < elem.length:
                raise Unprocessable(
                    f"truncated or corrupt: element ({elem.tag.group:04X},{elem.tag.element:04X}) declares "
                    f"{elem.length} bytes, only {len(elem.value)} remain"
                )
            end = fp.tell()
    except EOFError as exc:
        raise Unprocessable(f"truncated or corrupt: {exc}") from None
    if end != len(data):
        raise Unprocessable("truncated or corrupt: the file ends inside its last data element")


def read_instance(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse a Part 10 file; anything that is not a complete DICOM file raises
    :class:`Unprocessable` with the reason."""
    try:
        if not stop_before_pixels:
            check_complete(path)
        ds = dcmread(path, stop_before_pixels=stop_before_pixels)
        # Parsing is lazy per element: walk every element so a truncated or corrupt
        # file fails here, not half-way through a morph.
        for _ in ds.iterall():
            pass
    except Unprocessable:
        raise
    except InvalidDicomError as exc:
        raise Unprocessable(f"not a DICOM Part 10 file: {exc}") from None
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise Unprocessable(f"could not parse DICOM: {type(exc).__name__}: {exc}") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise Unprocessable("file meta has no Transfer Syntax UID")
    missing = [kw for kw in REQUIRED if not ds.get(kw)]
    if missing:
        raise Unprocessable(f"missing required attribute(s): {', '.join(missing)}")
    return ds


def write_instance(ds: Dataset, path: Path) -> None:
    """Write as a Part 10 file in the dataset's own transfer syntax, keeping the file
    meta consistent with the dataset."""
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(path, enforce_file_format=True)
