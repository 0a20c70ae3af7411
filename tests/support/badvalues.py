"""Instances with hostile or undecodable values, built byte by byte where pydicom would
refuse to write them: what a broken or malicious sender can put on the wire."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

_LONG_VRS = (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR")

# (7019,xx80) of TOSHIBA_MEC_OT3 has the VR 'OB_OW' in pydicom's private dictionary,
# which pydicom cannot decode (NotImplementedError when the value is first read)
UNKNOWN_VR_CREATOR = "TOSHIBA_MEC_OT3"
UNKNOWN_VR_TAG = f'(7019,"{UNKNOWN_VR_CREATOR}",80)'


def ct(**values) -> Dataset:
    """pydicom's CT_small with new SOP Instance, Series and Study UIDs and ``values`` set."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def explicit_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One element in Explicit VR Little Endian (PS3.5 7.1.2)."""
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _insert_before(data: bytes, marker: bytes, extra: bytes) -> bytes:
    at = data.index(marker)
    return data[:at] + extra + data[at:]


def unknown_vr_instance(path: Path, **values) -> Path:
    """A private element whose VR (from pydicom's private dictionary) pydicom cannot
    decode: read, it raises NotImplementedError. ``values``: other elements to set."""
    extra = (explicit_element(0x7019, 0x0010, b"LO", UNKNOWN_VR_CREATOR.encode() + b" ")
             + explicit_element(0x7019, 0x1080, b"UN", b"\x01\x02\x03\x04"))
    path.write_bytes(_insert_before(encoded(ct(**values)), b"\xe0\x7f\x10\x00", extra))  # before Pixel Data
    return path


def file_meta_in_dataset_instance(path: Path, **values) -> Path:
    """A file meta element (0002,0016) among the data set's elements, where PS3.10 7.1
    does not allow it; pydicom then refuses to write the data set."""
    extra = explicit_element(0x0002, 0x0016, b"AE", b"FUZZ")
    path.write_bytes(_insert_before(encoded(ct(**values)), b"\x08\x00\x08\x00CS", extra))  # before Image Type
    return path


def non_string_sop_class_instance(path: Path, **values) -> Path:
    """SOP Class UID (0008,0016) encoded with the VR US: pydicom reads it as a number."""
    ds = ct(**values)
    uid = str(ds.SOPClassUID).encode()
    uid += b"\0" * (len(uid) % 2)
    data = encoded(ds)
    original = explicit_element(0x0008, 0x0016, b"UI", uid)
    assert original in data
    path.write_bytes(data.replace(original, explicit_element(0x0008, 0x0016, b"US", b"\x07\x00")))
    return path


# --- what a server left behind --------------------------------------------------------------


def queue_errors(data_dir: Path) -> list[str]:
    """Every error the embedded runtime's queue holds: ``last_error`` of pending
    messages and of dead letters (read-only)."""
    import sqlite3

    with sqlite3.connect(f"file:{data_dir / 'queue.db'}?mode=ro", uri=True) as db:
        pending = db.execute("SELECT last_error FROM messages WHERE last_error != ''").fetchall()
        dead = db.execute("SELECT last_error FROM dead_letters").fetchall()
    return [error for (error,) in pending + dead]


def dead_letter_count(data_dir: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{data_dir / 'queue.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]


def temporary_files(folder: Path) -> list[Path]:
    """Files a write left half-done: durable_place's ``.tmp-*``, morph's ``axiom-morph-*``."""
    return [p for p in folder.rglob("*") if p.name.startswith((".tmp-", "axiom-morph-"))]
