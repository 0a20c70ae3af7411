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

