"""Hostile input: a seeded corpus of mutated DICOM files, and a campaign that sends it
into one ``axiom-flow serve`` over C-STORE and STOW-RS and accounts for every
instance. Shared by tests/hostile/test_fuzz.py and bench/hostile.py.

The corpus. Every case starts from a clean instance (one of pydicom's test files, a
character-set sample or a generated CT; fresh SOP Instance UID, a Patient ID) and
applies one mutation kind (:data:`KINDS`) to the encoded data set, or to the file
meta that only STOW-RS sends. Cases are generated from ``seed`` alone, so a failing
case can be rebuilt by its index. Over C-STORE the file meta is always clean (it is
not sent: it only chooses the presentation context); the data set is sent as bytes,
without pydicom decoding it, the way a broken modality sends broken bytes.

The campaign. Each case goes once over C-STORE (pynetdicom, chunked from the file)
and once over STOW-RS (one ``application/dicom`` request each), in parallel. Then,
once the pipeline is idle, every instance answered Success (C-STORE 0x0000 or a
Warning, PS3.4 B.2.3; STOW-RS Referenced SOP Sequence, PS3.18 10.5.3) must have ended
delivered (a ``delivered`` row in the ledger for its content) or quarantined with an
exception record; anything else (a ``failed`` record, a dead letter, nothing at all)
is reported with its case, mutation and channel.
"""

from __future__ import annotations

import io
import json
import random
import re
import sqlite3
import struct
import subprocess
import threading
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

# --- the corpus ----------------------------------------------------------------------

BASE_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm",
              "rtstruct.dcm", "test-SR.dcm", "reportsi.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm",
              "image_dfl.dcm")
CHARSET_FILES = ("chrX1.dcm", "chrH31.dcm", "chrRuss.dcm")

# mutation kind -> what it does (the order is the round-robin order of the corpus)
KINDS = {
    "bit_flip": "1-8 random bits flipped anywhere in the data set",
    "byte_garbage": "a run of 1-64 bytes overwritten with random bytes",
    "truncate": "the data set cut at a random byte",
    "random_bytes": "a data set of 1-4096 random bytes",
    "length_field": "an element's length field set to a wrong value (0, odd, past its end, twice its size)",
    "huge_length": "an element's length field set near 2^16 or 2^32",
    "undefined_length": "undefined length on a non-sequence element, a sequence without delimiters, "
                        "or sequences nested 50-2000 deep",
    "vr_corrupt": "an element's VR replaced by an unknown, lower-case, binary or other-length VR",
    "tag_reorder": "two top-level elements swapped (tags out of ascending order)",
    "duplicate_tag": "a top-level element repeated",
    "group2_in_dataset": "file meta elements (group 0002) inside the data set",
    "wrong_type_uid": "SOP Class/Instance UID as a binary, sequence or number VR, not a UID, empty or over-long",
    "charset_garbage": "Specific Character Set (0008,0005) and text values replaced by garbage bytes",
    "wrong_transfer_syntax": "the data set encoded in another transfer syntax than the one declared",
    "meta_corrupt": "the file meta broken (STOW-RS only; C-STORE sends the clean data set)",
    "empty_dataset": "no data set at all after the file meta",
}
# kinds that need to find elements in the data set (not deflated, not encapsulated-only)
_STRUCTURAL = {"length_field", "huge_length", "undefined_length", "vr_corrupt", "tag_reorder", "duplicate_tag",
               "group2_in_dataset", "wrong_type_uid", "charset_garbage", "wrong_transfer_syntax"}
_EXPLICIT_ONLY = {"vr_corrupt"}
_RARE = {"empty_dataset": 0.003}  # share of the corpus for kinds that cost a timeout each

UNDEFINED = 0xFFFFFFFF
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


@dataclass
class FuzzCase:
    index: int
    kind: str
    variant: str  # which form of the mutation, for the report
    base: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str  # in the clean file meta (the C-STORE presentation context)
    dataset: bytes  # the encoded data set, mutated
    stow_meta: bytes  # preamble + "DICM" + file meta as sent by STOW-RS (mutated for meta_corrupt)
    clean_meta: bytes = b""

    @property
    def label(self) -> str:
        return f"case {self.index} ({self.kind}/{self.variant} on {self.base})"

    def part10(self) -> bytes:
        """The file STOW-RS sends."""
        return self.stow_meta + self.dataset

    def write_for_cstore(self, path: Path) -> Path:
        path.write_bytes(self.clean_meta + self.dataset)
        return path


@dataclass
class _Base:
    name: str
    path: Path
    explicit: bool
    little: bool
    walkable: bool  # top-level elements can be found (not deflated)
    ts: str


@dataclass
class _Elem:
    tag: int
    start: int
    header: int
    length_at: int
    length_size: int
    vr: bytes | None
    end: int


def _bases(work: Path) -> list[_Base]:
    from tests.support.dicomgen import make_ct_study

    paths = [Path(get_testdata_file(name)) for name in BASE_FILES]
    for name in CHARSET_FILES:
        found = get_charset_files(name)
        if found:
            paths.append(Path(found[0]))
    ct = make_ct_study(work / "ct", 1, rows=16, columns=16, patient_id="FUZZ-CT")[0]
    ds = dcmread(ct)  # same bytes every time: the corpus is a function of the seed alone
    ds.PixelData = random.Random(len(ds.PixelData)).randbytes(len(ds.PixelData))
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["axiom-fuzz-ct-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["axiom-fuzz-ct-series"])
    ds.save_as(ct, enforce_file_format=True)
    paths.append(ct)
    bases = []
    for path in paths:
        ds = dcmread(path, force=True)  # the character-set samples have no preamble
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is None or "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            continue  # not a complete instance to start from
        bases.append(_Base(path.name, path, not ts.is_implicit_VR, ts.is_little_endian,
                           not ts.is_deflated, str(ts)))
    return bases


def _encode(path: Path, uid: str, patient_id: str, ts: str | None = None) -> tuple[bytes, bytes, str]:
    """(file meta with preamble, data set bytes, SOP Class UID) of ``path`` under a new
    SOP Instance UID, optionally re-encoded in the uncompressed ``ts``."""
    ds = dcmread(path, force=True)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.PatientID = patient_id
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid, "study"])
    if "SeriesInstanceUID" not in ds:
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid, "series"])
    if ts is not None:
        ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    return data[:meta_end], data[meta_end:], str(ds.SOPClassUID)


def _meta(sop_class: str, uid: str, ts: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


def elements(data: bytes, explicit: bool, little: bool) -> list[_Elem]:
    """The top-level elements of an encoded data set (PS3.5 7.1), with their byte spans."""
    e = "<" if little else ">"
    out, pos = [], 0
    while pos + 8 <= len(data):
        elem = _element_at(data, pos, explicit, e)
        out.append(elem)
        pos = elem.end
    return out


def _element_at(data: bytes, pos: int, explicit: bool, e: str) -> _Elem:
    group, number = struct.unpack_from(e + "HH", data, pos)
    if not explicit or group == 0xFFFE:  # items and delimiters have no VR (PS3.5 7.5)
        vr, length_at, size, header = None, pos + 4, 4, 8
    else:
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            length_at, size, header = pos + 8, 4, 12
        else:
            length_at, size, header = pos + 6, 2, 8
    length = struct.unpack_from(e + ("I" if size == 4 else "H"), data, length_at)[0]
    value = pos + header
    end = _undefined_end(data, value, explicit, e) if length == UNDEFINED else value + length
    if end > len(data):
        raise ValueError("element runs past the end")
    return _Elem(group << 16 | number, pos, header, length_at, size, vr, end)


def _undefined_end(data: bytes, pos: int, explicit: bool, e: str) -> int:
    """End of an undefined-length value: items up to the Sequence Delimitation Item."""
    while pos + 8 <= len(data):
        group, number, length = struct.unpack_from(e + "HHI", data, pos)
        if (group, number) == (0xFFFE, 0xE0DD):
            return pos + 8
        if (group, number) != (0xFFFE, 0xE000):
            raise ValueError("not an item")
        if length != UNDEFINED:
            pos += 8 + length
            continue
        pos += 8
        while True:  # the item's elements, up to the Item Delimitation Item
            if pos + 8 > len(data):
                raise ValueError("no item delimiter")
            group, number = struct.unpack_from(e + "HH", data, pos)
            if (group, number) == (0xFFFE, 0xE00D):
                pos += 8
                break
            pos = _element_at(data, pos, explicit, e).end
    raise ValueError("no sequence delimiter")


def _element(tag: int, vr: bytes, value: bytes, explicit: bool, little: bool, *, length: int | None = None) -> bytes:
    e = "<" if little else ">"
    if len(value) % 2:
        value += b" " if vr not in (b"UI", b"OB", b"UN") else b"\0"
    n = len(value) if length is None else length
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack(e + "I", n) + value
    if vr in LONG_VRS:
        return head + vr + b"\0\0" + struct.pack(e + "I", n) + value
    return head + vr + struct.pack(e + "H", n & 0xFFFF) + value


def _insert_sorted(data: bytes, elems: list[_Elem], tag: int, encoded: bytes) -> bytes:
    at = next((el.start for el in elems if el.tag >= tag), len(data))
    return data[:at] + encoded + data[at:]


def _replace(data: bytes, el: _Elem, encoded: bytes) -> bytes:
    return data[:el.start] + encoded + data[el.end:]


def _set_length(data: bytes, el: _Elem, value: int, little: bool) -> bytes:
    e = "<" if little else ">"
    packed = struct.pack(e + ("I" if el.length_size == 4 else "H"), value & (UNDEFINED if el.length_size == 4 else 0xFFFF))
    return data[:el.length_at] + packed + data[el.length_at + el.length_size:]


def _nested(depth: int, explicit: bool, little: bool) -> bytes:
    """Content Sequence (0040,A730) items nested ``depth`` deep, undefined lengths,
    properly delimited."""
    e = "<" if little else ">"
    seq_head = _element(0x0040A730, b"SQ", b"", explicit, little, length=UNDEFINED)
    item = struct.pack(e + "HHI", 0xFFFE, 0xE000, UNDEFINED)
    item_end = struct.pack(e + "HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack(e + "HHI", 0xFFFE, 0xE0DD, 0)
    leaf = _element(0x0040A010, b"CS", b"CONTAINS", explicit, little)
    return (seq_head + item) * depth + leaf + (item_end + seq_end) * depth


class _Mutator:
    def __init__(self, rng: random.Random, base: _Base):
        self.rng = rng
        self.base = base
        self.explicit, self.little = base.explicit, base.little

    def pick(self, elems: list[_Elem], *, want=lambda el: True) -> _Elem | None:
        choices = [el for el in elems if want(el) and el.tag >> 16 != 0xFFFE]
        return self.rng.choice(choices) if choices else None

    def apply(self, kind: str, data: bytes) -> tuple[str, bytes]:
        rng = self.rng
        elems = elements(data, self.explicit, self.little) if kind in _STRUCTURAL else []
        if kind == "bit_flip":
            out = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
            return "bits", bytes(out)
        if kind == "byte_garbage":
            i, n = rng.randrange(len(data)), rng.randint(1, 64)
            return "run", data[:i] + rng.randbytes(len(data[i:i + n])) + data[i + n:]
        if kind == "truncate":
            return "cut", data[:rng.randrange(1, len(data))]
        if kind == "random_bytes":
            return "random", rng.randbytes(rng.randint(1, 4096))
        if kind == "empty_dataset":
            return "empty", b""
        if kind == "length_field":
            el = self.pick(elems)
            size = el.end - el.start - el.header
            new = rng.choice([0, 1, size + 1, size + 2, size * 2 + 2, len(data) - el.start, rng.randrange(1, 0xFFFF)])
            return f"({el.tag:08X}) {new}", _set_length(data, el, new, self.little)
        if kind == "huge_length":
            el = self.pick(elems)
            new = 0xFFFE if el.length_size == 2 else rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFE, 0x80000000])
            return f"({el.tag:08X}) {new:#x}", _set_length(data, el, new, self.little)
        if kind == "undefined_length":
            variant = rng.choice(["element", "no_delimiter", "deep"])
            if variant == "element":
                el = self.pick(elems, want=lambda el: el.vr != b"SQ")
                value = data[el.start + el.header:el.end]
                if self.explicit and el.length_size == 2:
                    encoded = _element(el.tag, b"UN", value, True, self.little, length=UNDEFINED)
                else:
                    encoded = data[el.start:el.length_at] + struct.pack("<I", UNDEFINED) + value
                return f"element ({el.tag:08X})", _replace(data, el, encoded)
            e = "<" if self.little else ">"
            if variant == "no_delimiter":
                inner = _element(0x00080100, b"SH", b"T-1234", self.explicit, self.little)
                seq = (_element(0xFFFAFFFA, b"SQ", b"", self.explicit, self.little, length=UNDEFINED)
                       + struct.pack(e + "HHI", 0xFFFE, 0xE000, UNDEFINED) + inner)
                return "sequence without delimiters", data + seq
            depth = rng.choice([50, 300, 2000])
            return f"nested {depth} deep", _insert_sorted(data, elems, 0x0040A730, _nested(depth, self.explicit,
                                                                                             self.little))
        if kind == "vr_corrupt":
            el = self.pick(elems, want=lambda el: el.vr is not None)
            vr = rng.choice([b"QQ", b"GA", b"ZZ", b"\0\0", b"\xff\xfe", b"un", b"ob", rng.randbytes(2),
                             b"OB" if el.vr not in LONG_VRS else b"SH"])
            return f"({el.tag:08X}) {el.vr!r}->{vr!r}", data[:el.start + 4] + vr + data[el.start + 6:]
        if kind in ("tag_reorder", "duplicate_tag"):
            if len(elems) < 2:
                return "too few elements: bit flip", self.apply("bit_flip", data)[1]
            i = rng.randrange(len(elems) - 1)
            a, b = elems[i], elems[i + 1 if kind == "tag_reorder" or rng.random() < 0.5 else rng.randrange(len(elems))]
            if kind == "duplicate_tag":
                return f"({a.tag:08X}) twice", data[:a.end] + data[a.start:a.end] + data[a.end:]
            return (f"({a.tag:08X})<->({b.tag:08X})",
                    data[:a.start] + data[b.start:b.end] + data[a.end:b.start] + data[a.start:a.end] + data[b.end:])
        if kind == "group2_in_dataset":
            options = [(0x00020010, b"UI", rng.choice([ExplicitVRBigEndian, ImplicitVRLittleEndian, "1.2.3"]).encode()),
                       (0x00020003, b"UI", generate_uid(entropy_srcs=[str(rng.random())]).encode()),
                       (0x00020001, b"OB", b"\0\1"),
                       (0x00020002, b"UI", b"1.2.840.10008.5.1.4.1.1.7"), (0x00020013, b"SH", b"FUZZ")]
            chosen = sorted(rng.sample(options, rng.randint(1, 3)))
            encoded = b"".join(_element(tag, vr, value, self.explicit, self.little) for tag, vr, value in chosen)
            return "+".join(f"({t:08X})" for t, _, _ in chosen), encoded + data
        if kind == "wrong_type_uid":
            tag = rng.choice([0x00080016, 0x00080018])
            el = next((x for x in elems if x.tag == tag), None)
            vr, value, name = rng.choice([
                (b"US", rng.randbytes(2), "US"), (b"FD", struct.pack("<d", rng.uniform(1, 1e6)), "FD"),
                (b"OB", rng.randbytes(16), "OB"),
                (b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000, 0), "SQ"), (b"UI", b"not a uid!", "text"),
                (b"UI", b"", "empty"), (b"UI", b"1." * 100 + b"1", "201 chars"), (b"UI", b"1.2.\x00\xff.3", "binary")])
            encoded = _element(tag, vr, value, self.explicit, self.little)
            out = _replace(data, el, encoded) if el else _insert_sorted(data, elems, tag, encoded)
            return f"({tag:08X}) {name}", out
        if kind == "charset_garbage":
            garbage = rng.choice([b"ISO_IR 999", b"\xff\xfe\xfd", b"ISO 2022 IR 87\\GARBAGE", b"ISO_IR 192\\\\",
                                  b"\x1b$B\x1b(J", rng.randbytes(8)])
            out = data
            for tag, value in sorted([(0x00080005, garbage), (0x00100010, b"\x1b$B\xff\xfe^\x80\x81\x1b"),
                                      (0x00081030, rng.randbytes(24))], reverse=True):
                elems = elements(out, self.explicit, self.little)
                vr = {0x00080005: b"CS", 0x00100010: b"PN", 0x00081030: b"LO"}[tag]
                encoded = _element(tag, vr, value, self.explicit, self.little)
                el = next((x for x in elems if x.tag == tag), None)
                out = _replace(out, el, encoded) if el else _insert_sorted(out, elems, tag, encoded)
            return f"charset {garbage[:12]!r}", out
        raise ValueError(f"unknown mutation kind {kind}")


def build_corpus(work: Path, count: int, *, seed: int) -> list[FuzzCase]:
    """``count`` cases from ``seed``: every kind in turn (rare ones at their share),
    bases in turn among those the kind applies to."""
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bases = _bases(work)
    kinds = [k for k in KINDS if k not in _RARE]
    rare = {k: max(1, round(count * share)) for k, share in _RARE.items()}
    plan = [kinds[i % len(kinds)] for i in range(count - sum(rare.values()))]
    for kind, n in rare.items():
        for j in range(n):
            plan.insert((j + 1) * len(plan) // (n + 1), kind)
    cases = []
    for index, kind in enumerate(plan):
        usable = [b for b in bases if (kind not in _STRUCTURAL or b.walkable) and (kind not in _EXPLICIT_ONLY or
                                                                                    b.explicit)]
        if kind == "wrong_transfer_syntax":
            usable = [b for b in usable if b.ts in UNCOMPRESSED]
        base = usable[index % len(usable)]
        uid = generate_uid(entropy_srcs=[f"axiom-fuzz-{seed}-{index}"])
        patient_id = f"FUZZ-{seed}-{index}"
        meta, data, sop_class = _encode(base.path, uid, patient_id)
        ts = base.ts
        mutator = _Mutator(rng, base)
        stow_meta = meta
        if kind == "wrong_transfer_syntax":
            ts = rng.choice([t for t in UNCOMPRESSED if t != base.ts])  # declared; the data stays as encoded
            stow_meta = _meta(sop_class, uid, ts)
            variant = f"{base.ts} sent as {ts}"
        elif kind == "meta_corrupt":
            variant, stow_meta = _corrupt_meta(rng, meta)
        else:
            variant, data = mutator.apply(kind, data)
        clean_meta = _meta(sop_class, uid, ts)
        cases.append(FuzzCase(index, kind, variant, base.name, sop_class, uid, ts, data, stow_meta, clean_meta))
    return cases


def _corrupt_meta(rng: random.Random, meta: bytes) -> tuple[str, bytes]:
    variant = rng.choice(["no DICM", "group length too long", "group length too short", "truncated",
                          "no transfer syntax", "garbage transfer syntax"])
    out = bytearray(meta)
    if variant == "no DICM":
        out[128:132] = b"DICN"
    elif variant.startswith("group length"):
        gl = struct.unpack_from("<I", out, 140)[0]
        struct.pack_into("<I", out, 140, gl + 200 if variant.endswith("long") else max(0, gl - 30))
    elif variant == "truncated":
        out = out[:rng.randrange(132, len(out))]
    else:
        at = bytes(out).find(b"\x02\x00\x10\x00UI")
        length = struct.unpack_from("<H", out, at + 6)[0]
        value = b"" if variant == "no transfer syntax" else b"1.2.\xff\xfe" + b"9" * (length - 6)
        if variant == "no transfer syntax":
            out = out[:at] + out[at + 8 + length:]
            struct.pack_into("<I", out, 140, struct.unpack_from("<I", out, 140)[0] - 8 - length)
        else:
            out[at + 8:at + 8 + length] = value[:length].ljust(length, b"9")
    return variant, bytes(out)


# --- sending ---------------------------------------------------------------------------


@dataclass
class Answer:
    case: FuzzCase
    channel: str  # "cstore" or "stow"
    success: bool = False  # C-STORE Success/Warning, or STOW-RS Referenced SOP
    detail: str = ""  # status or failure reason as answered, or what went wrong
    answered: bool = True  # False: no answer (timeout, dropped connection, 5xx)
    stored_uid: str = ""  # the SOP Instance UID the server stored it under


def _split_at_group_length(path) -> tuple:
    """(file meta, offset of the data set) of a Part 10 file, the meta ending where its
    group length (0002,0000) says (PS3.10 7.1). pynetdicom's own ``split_dataset``
    reads group 0002 up to the first other group, so group-0002 elements at the start
    of a broken data set would be taken for file meta and never sent."""
    data = Path(path).read_bytes()
    offset = 144 + struct.unpack_from("<I", data, 140)[0]
    return dcmread(io.BytesIO(data[:offset])).file_meta, offset


def send_cstore(port: int, cases: list[FuzzCase], work: Path, *, ae_title: str = "AXIOM",
                dimse_timeout: float = 30.0, stop: threading.Event | None = None) -> list[Answer]:
    """C-STORE every case's clean file meta + mutated data set as bytes (pynetdicom's
    chunked send), on as few associations as the server leaves open."""
    import pynetdicom.association
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    work.mkdir(parents=True, exist_ok=True)
    contexts = sorted({(c.sop_class_uid, c.transfer_syntax_uid) for c in cases})
    by_class: dict[str, list[str]] = defaultdict(list)
    for sop_class, ts in contexts:
        by_class[sop_class].append(ts)
    ae = AE(ae_title="FUZZMOD")
    ae.dimse_timeout = dimse_timeout
    ae.acse_timeout = 30
    ae.network_timeout = 30
    for sop_class, syntaxes in by_class.items():
        for ts in syntaxes:  # one context per pair: the server picks per context
            ae.add_requested_context(sop_class, [ts])
    answers: list[Answer] = []
    with mock.patch.object(pynetdicom.association, "split_dataset", _split_at_group_length):
        _send_each(ae, port, ae_title, cases, work, answers, stop)
    return answers


def _send_each(ae, port: int, ae_title: str, cases: list[FuzzCase], work: Path, answers: list[Answer],
               stop: threading.Event | None) -> None:
    assoc = None
    for case in cases:
        if stop is not None and stop.is_set():
            break
        path = case.write_for_cstore(work / f"{case.index}.dcm")
        try:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
                if not assoc.is_established:
                    answers.append(Answer(case, "cstore", answered=False, detail="association not accepted"))
                    assoc = None
                    continue
            status = assoc.send_c_store(path)
        except Exception as exc:  # noqa: BLE001 - a sender-side failure is reported, not raised
            answers.append(Answer(case, "cstore", answered=False, detail=f"sender error {type(exc).__name__}: {exc}"))
            if assoc is not None and assoc.is_established:
                assoc.abort()
            assoc = None
            continue
        finally:
            path.unlink(missing_ok=True)
        code = status.get("Status") if status is not None else None
        if code is None:
            answers.append(Answer(case, "cstore", answered=False, detail="no C-STORE response (DIMSE timeout or abort)"))
            continue
        ok = code == 0x0000 or code in (0x0107, 0x0116) or (code & 0xF000) == 0xB000
        answers.append(Answer(case, "cstore", success=ok, detail=f"0x{code:04X}", stored_uid=case.sop_instance_uid))
    if assoc is not None and assoc.is_established:
        assoc.release()


def send_stow(http_port: int, cases: list[FuzzCase], key: str, *, stop: threading.Event | None = None) -> list[Answer]:
    """One STOW-RS request (``application/dicom``) per case."""
    import httpx

    answers = []
    url = f"http://127.0.0.1:{http_port}/dicomweb/studies"
    headers = {"X-API-Key": key, "Content-Type": "application/dicom", "Accept": "application/dicom+json"}
    with httpx.Client(timeout=60) as client:
        for case in cases:
            if stop is not None and stop.is_set():
                break
            try:
                response = client.post(url, content=case.part10(), headers=headers)
            except httpx.HTTPError as exc:
                answers.append(Answer(case, "stow", answered=False, detail=f"HTTP error {type(exc).__name__}"))
                continue
            answers.append(_stow_answer(case, response))
    return answers


def _stow_answer(case: FuzzCase, response) -> Answer:
    if response.status_code not in (200, 202, 409):
        return Answer(case, "stow", answered=response.status_code < 500,
                      detail=f"HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    referenced = body.get("00081199", {}).get("Value", [])
    if referenced:
        uid = referenced[0].get("00081155", {}).get("Value", [""])[0]
        return Answer(case, "stow", success=True, detail="stored", stored_uid=uid)
    failed = body.get("00081198", {}).get("Value", [{}])[0]
    reason = failed.get("00081197", {}).get("Value", [0])[0]
    return Answer(case, "stow", detail=f"failed 0x{reason:04X}")


# --- accounting ------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^0-9A-Za-z.]")  # as the Ingestor names objects (shared/inputs/ingest.py)


def _object_uid(name: str) -> str:
    return name.rsplit("/", 1)[-1].rsplit("-", 1)[0]


def _blob_name(ref: str | None) -> str:
    """The object name of a BlobRef as written in a record (gs://bucket/name#gen)."""
    if not ref:
        return ""
    rest = ref.split("://", 1)[-1]
    return rest.split("/", 1)[-1].split("#", 1)[0]


@dataclass
class Outcome:
    """What became of each instance the server stored."""

    delivered: int = 0
    quarantined: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    unattributed: list[str] = field(default_factory=list)  # records/objects of no case


def account(data_dir: Path, answers: list[Answer], records: list[dict], destination_id: str) -> Outcome:
    """Every instance answered Success ends delivered or quarantined with a record."""
    from shared.adapters.local_blobs import LocalBlobStore
    from shared.dicom.io import content_digest, read_instance
    from shared.messages import BlobRef, Delivery, IngestMetadata

    warnings.simplefilter("ignore")  # pydicom's about the broken instances read here
    blobs = LocalBlobStore(data_dir / "blobs")
    with sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True) as db:
        delivered_keys = {k for (k,) in db.execute("SELECT key FROM deliveries WHERE state='delivered'")}
    quarantine_records = {_blob_name(r.get("quarantined_as")): r for r in records if r.get("status") == "quarantined"}
    records_by_blob: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        names = {_blob_name(r.get("blob"))}
        try:  # a retryable record holds its message: a Plan's blob, a Delivery's source
            body = json.loads((r.get("retry") or {}).get("body") or "{}")
            names |= {body[k]["name"] for k in ("blob", "source") if isinstance(body.get(k), dict)}
        except (ValueError, KeyError, TypeError):
            pass
        for name in names - {""}:
            records_by_blob[name].append(r)

    # every object the inputs stored, by (channel, uid in its name)
    objects: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)  # -> [(bucket, name)]
    for bucket in ("ingest", "quarantine"):
        for name in blobs.list(bucket):
            if bucket == "quarantine" and name.startswith("stow/"):
                continue  # refused by STOW-RS (answered Failed): not stored
            meta = blobs.metadata(BlobRef(bucket=bucket, name=name))
            objects[(IngestMetadata.from_blob_metadata(meta).source_type, _object_uid(name))].append((bucket, name))

    outcome = Outcome()
    expected: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for a in answers:
        if a.success:
            expected[(a.channel, _UNSAFE.sub("_", a.stored_uid)[:64] or "unknown")].append(a)
    for key, group in expected.items():
        found = objects.pop(key, [])
        labels = ", ".join(f"{a.case.label}" for a in group[:3])
        kind = group[0].case.kind
        if len(found) != len(group):
            outcome.problems.append((kind, f"{labels} over {key[0]}: answered Success {len(group)} time(s), "
                                           f"{len(found)} object(s) stored"))
        for bucket, name in found:
            if bucket == "quarantine":
                if name in quarantine_records:
                    outcome.quarantined += 1
                else:
                    outcome.problems.append((kind, f"{labels} over {key[0]}: quarantined without a record"))
                continue
            ref = BlobRef(bucket=bucket, name=name)
            with blobs.local_path(ref) as path:
                data = path.read_bytes()
                try:
                    uid = str(read_instance(path, data=data).SOPInstanceUID)
                except Exception:  # noqa: BLE001 - then it was not deliverable: records say why
                    uid = None
            if uid is not None:
                probe = Delivery(sop_instance_uid=uid, destination_id=destination_id, blob=ref, source=ref,
                                 sha256=content_digest(data),
                                 ingest=IngestMetadata.from_blob_metadata(blobs.metadata(ref)))
                if probe.idempotency_key in delivered_keys:
                    outcome.delivered += 1
                    continue
            recs = records_by_blob.get(name, [])
            what = "; ".join(f"{r['status']} at {r['stage']}: {r['reason'][:300]}" for r in recs) or "no record"
            outcome.problems.append((kind, f"{labels} over {key[0]}: not delivered, not quarantined: {what}"))
    for (channel, uid), found in objects.items():
        outcome.unattributed.append(f"{len(found)} object(s) from {channel} named {uid} that no case was answered "
                                    "Success for")
    return outcome


# --- the server process ----------------------------------------------------------------


def process_tree(pid: int, children: list[int]) -> dict[int, dict[str, int]]:
    """RSS (kB), peak RSS (kB), threads and open descriptors of each process."""
    stats = {}
    for p in [pid, *children]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            fds = len(list(Path(f"/proc/{p}/fd").iterdir()))
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        stats[p] = {"rss_kb": int(fields["VmRSS"].split()[0]), "hwm_kb": int(fields["VmHWM"].split()[0]),
                    "threads": int(fields["Threads"]), "fds": fds}
    return stats


def echo(port: int, ae_title: str = "AXIOM") -> bool:
    """dcmtk echoscu: does the server still answer C-ECHO?"""
    from tests.support.procs import DCMTK_ENV, require

    result = subprocess.run([require("echoscu"), "-aec", ae_title, "-to", "20", "127.0.0.1", str(port)],
                            capture_output=True, env=DCMTK_ENV, timeout=60)
    return result.returncode == 0


def crashes_in_log(log_path: Path) -> list[str]:
    """Lines that say a thread or process died (uncaught: not a handled, logged error)."""
    text = log_path.read_text(errors="replace")
    return [line for line in text.splitlines()
            if line.startswith("Exception in thread") or "Fatal Python error" in line or "Segmentation fault" in line]


@dataclass
class Campaign:
    cases: list[FuzzCase]
    answers: list[Answer]
    outcome: Outcome
    baseline: dict[int, dict[str, int]]
    after: dict[int, dict[str, int]]
    peak_rss_kb: int
    seconds: float

    def by_kind(self) -> dict[str, Counter]:
        counts: dict[str, Counter] = defaultdict(Counter)
        for a in self.answers:
            counts[a.case.kind][f"{a.channel}:{'success' if a.success else a.detail.split(':')[0]}"] += 1
        return counts


def run(server, cases: list[FuzzCase], work: Path, *, key: str, destination_id: str = "archive",
        during=None, drain_timeout: float = 600) -> Campaign:
    """Send ``cases`` over C-STORE and STOW-RS at once (and ``during()`` alongside, if
    given: bench/hostile.py's abusive connections), wait for the pipeline, account."""
    pid = server.proc.pid
    children = server.status()["pipeline_processes"]
    baseline = process_tree(pid, children)
    peak = [sum(s["rss_kb"] for s in baseline.values())]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            peak[0] = max(peak[0], sum(s["rss_kb"] for s in process_tree(pid, children).values()))

    results: dict[str, list[Answer]] = {}
    started = time.monotonic()
    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=lambda: results.__setitem__(
                   "cstore", send_cstore(server.dicom_port, cases, work / "cstore")), daemon=True),
               threading.Thread(target=lambda: results.__setitem__(
                   "stow", send_stow(server.http_port, cases, key)), daemon=True)]
    if during is not None:
        threads.append(threading.Thread(target=during, daemon=True))
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    server.wait_idle(drain_timeout)
    done.set()
    threads[0].join()
    seconds = time.monotonic() - started
    answers = results.get("cstore", []) + results.get("stow", [])
    records = server.exceptions()
    outcome = account(server.data_dir, answers, records, destination_id)
    return Campaign(cases, answers, outcome, baseline, process_tree(pid, children), peak[0], seconds)
