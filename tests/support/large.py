"""Large instances for memory tests and bench/large.py: generated at run time, written
in chunks (their pixel data is never in memory), and checked by streaming."""

from __future__ import annotations

import hashlib
import mmap
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
FRAME = 512 * 512 * 2
CHUNK = 8 * 1024 * 1024
MiB = 1024 * 1024


def make_large_instance(path: Path, size_mb: int) -> tuple[str, int]:
    """Write an Enhanced CT of about ``size_mb`` MB of zero frames, Explicit VR Little
    Endian; (SOP Instance UID, Pixel Data length)."""
    frames = max(1, size_mb * 1024 * 1024 // FRAME)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "LARGE-1", "Large^Instance", "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.save_as(path, enforce_file_format=True)
    length = frames * FRAME
    zeros = bytes(CHUNK)
    with open(path, "ab") as fh:  # (7FE0,0010) OW, explicit length, appended without a buffer
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        left = length
        while left:
            n = min(left, CHUNK)
            fh.write(zeros[:n])
            left -= n
    return str(ds.SOPInstanceUID), length


def pixel_data_length(path: Path) -> int:
    """The Pixel Data length field, from the element headers of a mapped file (its
    values are not read)."""
    from shared.dicom.io import part10_layout, top_level_spans

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        offset, syntax = part10_layout(data)
        return next((length for tag, _, _, length, _ in top_level_spans(data, offset, syntax) if tag == 0x7FE00010), 0)


def sop_instance_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def sha256_of(path: Path) -> str:
    """A file's SHA-256, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_sha256(path: Path) -> str:
    """SHA-256 of everything after the file meta (the data set as encoded), read in
    chunks: what must arrive intact where a peer writes its own file meta."""
    from pydicom.filereader import read_file_meta_info

    start = 132 + 12 + int(read_file_meta_info(path).FileMetaInformationGroupLength)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class Peak:
    mb: float = 0.0


@contextmanager
def traced_peak() -> Iterator[Peak]:
    """The peak of Python's own allocations (tracemalloc) inside the block, in MB:
    deterministic, unlike RSS, and blind to the page cache and mapped files."""
    peak = Peak()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        yield peak
    finally:
        _, top = tracemalloc.get_traced_memory()
        peak.mb = (top - base) / MiB
        if started:
            tracemalloc.stop()


def delivery_for(path: Path, destination_id: str, sha256: str = "0" * 64):
    """A Delivery of ``path`` to ``destination_id``, as morph would publish it."""
    from pydicom import dcmread

    from shared.messages import BlobRef, Delivery, IngestMetadata

    meta = dcmread(path, stop_before_pixels=True).file_meta
    ref = BlobRef(bucket="ready", name=path.name)
    return Delivery(sop_instance_uid=str(meta.MediaStorageSOPInstanceUID), sop_class_uid=str(meta.MediaStorageSOPClassUID),
                    transfer_syntax_uid=str(meta.TransferSyntaxUID), destination_id=destination_id, blob=ref,
                    sha256=sha256, source=ref,
                    ingest=IngestMetadata(source_type="cstore"))


def content_digest_takes_paths() -> bool:
    """Whether :func:`shared.dicom.io.content_digest` hashes a file from its path (the
    streaming core of issue 13). Tests of code that relies on it are expected to fail
    until then."""
    from shared.dicom.io import content_digest

    try:
        content_digest(Path(__file__))
    except TypeError:
        return False
    except Exception:  # not DICOM: hashed whole, or refused; either way a path was taken
        return True
    return True
