"""The product's first promise as a test oracle: every instance answered Success ends
delivered, quarantined, held or failed, and all but the first carry an exception record.

:func:`make_mix` writes a seeded random mix of instances (valid ones routed by their
Station Name to various destinations, ones without Patient ID, truncated and garbage
files, resends); :func:`mix_config` is the config that routes them; :func:`check` compares
what each runtime delivered and recorded with what each instance must have come to."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from shared.dicom.io import part10_layout
from tests.support.dicomgen import make_ct_study

# Station Name -> destinations of the rule it selects (None: no rule matches, held)
ROUTES: dict[str, list[str] | None] = {
    "R-ARCHIVE": ["archive"],
    "R-BOTH": ["pacs", "archive"],
    "R-OFF": ["off", "archive"],
    "R-DOWN": ["down", "pacs"],
    "R-NONE": None,
}
# what a destination does with what it is sent
BEHAVIOUR = {"archive": "delivered", "pacs": "delivered", "off": "held", "down": "failed"}
INSTITUTION = "AXIOM INVARIANT"


def mix_config(pacs: dict, *, down_port: int, archive_path: str = "out", off_path: str = "off") -> dict:
    """The destinations and rules for the mix. ``pacs``: a C-STORE peer that accepts."""
    quick = {"max_attempts": 2, "initial_backoff_s": 0.1, "max_backoff_s": 0.2}
    return {
        "destinations": [
            {"id": "archive", "type": "filesystem", "path": archive_path},
            {"id": "pacs", "type": "cstore", **pacs, "retry": {"max_attempts": 3, "initial_backoff_s": 0.2}},
            {"id": "off", "type": "filesystem", "path": off_path, "enabled": False},
            {"id": "down", "type": "cstore", "ae_title": "DOWN", "host": "127.0.0.1", "port": down_port,
             "timeout_s": 2, "retry": quick},
        ],
        "rulesets": [{"id": "mix", "mode": "ALL_MATCHES", "rules": [
            {"id": station.lower(), "when": {"tag": "StationName", "value": station},
             "actions": [{"action": "set", "tag": "InstitutionName", "value": INSTITUTION}],
             "destinations": dests}
            for station, dests in ROUTES.items() if dests is not None
        ]}],
        # no default route: an instance no rule matches is held
    }


@dataclass
class Sent:
    path: Path
    sop_instance_uid: str
    kind: str  # "valid", "no-patient-id", "truncated", "garbage"
    station: str = ""
    raw: bool = False  # send without decoding (broken files)


@dataclass
class Mix:
    sent: list[Sent] = field(default_factory=list)

    @property
    def valid(self) -> list[Sent]:
        return [s for s in self.sent if s.kind == "valid"]


def make_mix(folder: Path, count: int, seed: int) -> Mix:
    """``count`` instances (plus resends of about a tenth of them), kinds drawn at random."""
    rng = random.Random(seed)
    paths = make_ct_study(folder / "made", count, rows=32, columns=32)
    mix = Mix()
    for n, path in enumerate(paths):
        ds = dcmread(path)
        kind = rng.choices(["valid", "no-patient-id", "truncated", "garbage"], weights=[14, 2, 1, 1])[0]
        station = rng.choice(list(ROUTES))
        ds.StationName = station
        if kind == "no-patient-id":
            del ds.PatientID
        out = folder / f"{n:04d}-{kind}.dcm"
        ds.save_as(out)
        if kind == "truncated":
            data = out.read_bytes()
            out.write_bytes(data[: len(data) - 700])  # cut inside Pixel Data
        elif kind == "garbage":
            data = out.read_bytes()
            offset, _ = part10_layout(data)  # keep the file meta, replace the data set
            out.write_bytes(data[:offset] + b"\xff\xfe not a data set, a JPEG " * 30)
        mix.sent.append(Sent(out, str(ds.SOPInstanceUID), kind, station, raw=kind in ("truncated", "garbage")))
    for again in rng.sample(mix.valid, max(1, len(mix.valid) // 10)):
        mix.sent.append(Sent(again.path, again.sop_instance_uid, "valid", again.station))
    return mix


def sop_uids(paths) -> set[str]:
    """SOP Instance UIDs of the readable files among ``paths`` (skips files still being written)."""
    uids = set()
    for path in paths:
        try:
            uids.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        except Exception:  # noqa: BLE001 - partial or not DICOM
            continue
    return uids


def check(mix: Mix, records: list[dict], delivered: dict[str, set[str]]) -> list[str]:
    """What went wrong, one line per instance and destination; empty when each instance
    came to what it must: ``delivered`` maps destination id -> SOP Instance UIDs there."""
    problems = []

    def has(uid: str, status: str, destination: str | None = None) -> bool:
        return any(r.get("status") == status
                   and (r.get("sop_instance_uid") == uid or uid in str(r.get("blob", "")))
                   and (destination is None or r.get("destination_id") == destination)
                   for r in records)

    anywhere = set().union(*delivered.values()) if delivered else set()
    for sent in {s.sop_instance_uid: s for s in mix.sent}.values():
        uid = sent.sop_instance_uid
        if sent.kind != "valid":
            if not has(uid, "quarantined"):
                problems.append(f"{sent.kind} {uid}: no quarantine record")
            if uid in anywhere:
                problems.append(f"{sent.kind} {uid}: delivered")
            continue
        destinations = ROUTES[sent.station]
        if destinations is None:
            if not has(uid, "held"):
                problems.append(f"unmatched {uid}: no held record")
            if uid in anywhere:
                problems.append(f"unmatched {uid}: delivered")
            continue
        for dest in destinations:
            expected = BEHAVIOUR[dest]
            if expected == "delivered":
                if uid not in delivered.get(dest, set()):
                    problems.append(f"{uid} -> {dest}: not delivered")
                if has(uid, "failed", dest) or has(uid, "held", dest):
                    problems.append(f"{uid} -> {dest}: delivered but recorded as failing")
            elif not has(uid, expected, dest):
                problems.append(f"{uid} -> {dest}: no {expected} record")
    return problems
