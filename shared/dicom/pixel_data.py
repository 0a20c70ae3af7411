"""How long native Pixel Data must be, from the Image Pixel module's attributes, so a
truncated image is caught without reading its pixels.

Native (not encapsulated) Pixel Data (7FE0,0010) holds Rows x Columns x Samples per
Pixel values of Bits Allocated bits for each of Number of Frames frames (PS3.5 section
8.1.1; PS3.3 C.7.6.3.1), packed for Bits Allocated 1 and padded to an even length
(PS3.5 section 7.1.1); YBR_FULL_422 holds two samples per pixel, not three (PS3.3
C.7.6.3.1.2). Longer is padding some writers add; shorter is an image cut off."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF


def expected_length(ds: Dataset) -> int | None:
    """The bytes native Pixel Data needs for ``ds``'s image attributes, or None when
    an attribute is missing or not a positive number."""
    values = []
    for keyword, default in (("Rows", None), ("Columns", None), ("SamplesPerPixel", 1), ("BitsAllocated", None),
                             ("NumberOfFrames", 1)):
        value = ds.get(keyword, default)
        try:
            value = int(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            return None
        if not value or value < 0:
            return None
        values.append(value)
    rows, columns, samples, bits, frames = values
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2
    length = (rows * columns * samples * frames * bits + 7) // 8
    return length + length % 2


def shortfall(ds: Dataset) -> str | None:
    """Why ``ds``'s native Pixel Data is too short for its image, or None (no Pixel
    Data, an encapsulated transfer syntax, attributes that say nothing, or enough
    bytes). Reads the element's length, never its value."""
    if PIXEL_DATA not in ds:
        return None
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))) if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_transfer_syntax or syntax.is_compressed:
        return None
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    length = getattr(elem, "length", 0) if elem.value is None else len(elem.value)
    if length == _UNDEFINED:
        return None
    expected = expected_length(ds)
    if expected is None or length >= expected:
        return None
    return (f"Pixel Data holds {length} bytes, fewer than the {expected} that Rows, Columns, Samples per Pixel, "
            "Bits Allocated and Number of Frames call for (PS3.5 8.1.1): the image is truncated")
