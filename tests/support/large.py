"""Large instances for memory tests and bench/large.py: generated at run time, written
in chunks (their pixel data is never in memory), and checked by streaming."""

from __future__ import annotations

import hashlib
import random
import struct
import tracemalloc
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
FRAME = 512 * 512 * 2
MiB = 1024 * 1024


def make_large_instance(path: Path, size_mb: int, *, charset: str | None = None,
                        patient_name: str = "Large^Instance") -> tuple[str, int]:
    """Write an Enhanced CT of about ``size_mb`` MB: 512 x 512 16-bit frames,
    Explicit VR Little Endian, its Pixel Data a pseudo-random block repeated at an odd
    period (a shifted or truncated copy changes its digest), appended in chunks so it is
    never in memory. Returns (SOP Instance UID, Pixel Data length)."""
    # a defined length is at most 0xFFFFFFFE (PS3.5 7.1.1): 4 GB is one frame short of 4 GiB
    frames = min(max(1, size_mb * 1024 * 1024 // FRAME), 0xFFFFFFFE // FRAME)
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
    length = frames * FRAME
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


def sop_instance_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


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


class PeakMemory:
    """This process's memory growth inside a ``with`` block, MB: ``python_mb``, the peak
    of Python's own allocations (tracemalloc: deterministic, blind to mapped files and
    the page cache), and ``rss_mb``, the peak resident set, mapped file pages included,
    over the RSS at the start (/proc/self/status VmHWM, reset through
    /proc/self/clear_refs: Linux 4.0+)."""

    def __enter__(self) -> "PeakMemory":
        Path("/proc/self/clear_refs").write_text("5")
        self._rss = _status_kb("VmRSS")
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base, _ = tracemalloc.get_traced_memory()
        return self

    def __exit__(self, *exc) -> None:
        _, top = tracemalloc.get_traced_memory()
        if self._started:
            tracemalloc.stop()
        self.python_mb = (top - self._base) / MiB
        self.rss_mb = (_status_kb("VmHWM") - self._rss) / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


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
