"""Synthetic instances for tests and benchmarks: unique UIDs, real pixel data."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def make_ct_study(out_dir: Path, count: int, *, rows: int = 512, columns: int = 512,
                  patient_id: str = "AXF-TEST-1") -> list[Path]:
    """Write ``count`` CT instances of one study and series, 16-bit ``rows`` x
    ``columns`` pixels (512 x 512: about 530 KB each), Explicit VR Little Endian."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    pixels = os.urandom(rows * columns * 2)
    paths = []
    for n in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        # Same size, different bytes per instance, without paying os.urandom each time.
        shift = (n * 2) % len(pixels)
        ds.PixelData = pixels[shift:] + pixels[:shift]
        path = out_dir / f"ct{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LARGE_FRAME = 512 * 512 * 2


def make_large_instance(path: Path, size_mb: int, *, charset: str | None = None,
                        patient_name: str = "Large^Instance") -> tuple[str, int]:
    """Write an Enhanced CT of about ``size_mb`` MB: 512 x 512 16-bit frames,
    Explicit VR Little Endian, its Pixel Data a pseudo-random block repeated at an odd
    period (a shifted or truncated copy changes its digest), appended in chunks so it is
    never in memory. Returns (SOP Instance UID, Pixel Data length)."""
    import random
    import struct

    from pydicom.dataset import Dataset, FileMetaDataset

    # a defined length is at most 0xFFFFFFFE (PS3.5 7.1.1): 4 GB is one frame short of 4 GiB
    frames = min(max(1, size_mb * 1024 * 1024 // LARGE_FRAME), 0xFFFFFFFE // LARGE_FRAME)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "LARGE-1", patient_name, "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.save_as(path, enforce_file_format=True)
    length = frames * LARGE_FRAME
    block = random.Random(length).randbytes(8 * 1024 * 1024 + 7)
    with open(path, "ab") as fh:  # (7FE0,0010) OW, explicit length (PS3.5 7.1.2)
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        left = length
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n
    return str(ds.SOPInstanceUID), length


def pixel_data_digest(path: Path) -> tuple[int, str]:
    """(length, sha256) of a Part 10 file's Pixel Data value, read in chunks from its
    element headers' positions; (0, "") without Pixel Data."""
    import hashlib

    from shared.dicom.io import copy_range, mapped, part10_layout, top_level_spans

    data = mapped(path)
    offset, syntax = part10_layout(data)
    for tag, _, value, length, end in top_level_spans(data, offset, syntax):
        if tag == 0x7FE00010:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in copy_range(fh, value, end):
                    digest.update(chunk)
            return end - value, digest.hexdigest()
    return 0, ""
