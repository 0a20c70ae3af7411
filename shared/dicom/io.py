"""Reading and writing instances without touching pixel data.

pydicom keeps Pixel Data as the encoded bytes unless it is accessed through
``pixel_array``; nothing here does, so pixel data is carried through byte for byte
and the transfer syntax of the file is kept (PS3.10 section 7.1 file meta)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from shared.errors import Unprocessable

REQUIRED = ("SOPClassUID", "SOPInstanceUID")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def read_instance(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse a Part 10 file; anything that is not a complete DICOM file raises
    :class:`Unprocessable` with the reason."""
    try:
        ds = dcmread(path, stop_before_pixels=stop_before_pixels)
        # Parsing is lazy per element: walk every element so a truncated or corrupt
        # file fails here, not half-way through a morph.
        for _ in ds.iterall():
            pass
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
