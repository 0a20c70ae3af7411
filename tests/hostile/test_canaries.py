"""Canary patient data through every path of ``axiom-flow serve`` (delivered, refused
by name, refused by an OS error, quarantined by match and by morph, undecodable,
pydicom warnings): no canary in any log line, exception record or queue error."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.test_bad_input import send_raw
from tests.support import badvalues
from tests.support.badvalues import ct, encoded, queue_errors
from tests.support.procs import AxiomServer, storescu

# distinctive values no log line would hold by chance; sanitized names keep them visible
PATIENT_NAME = "Zqcanaryfam^Zqcanarygiven"
PATIENT_ID = "ZQPID-40417"
CANARIES = ["Zqcanaryfam", "Zqcanarygiven", PATIENT_ID, "ZQACC9921", "ZQREFDOC", "19020304", "ZQ_CHARSET_77",
            "ZQSTUDYDESC", "ZQLONGID"]
PHI = {"PatientName": PATIENT_NAME, "PatientID": PATIENT_ID, "AccessionNumber": "ZQACC9921",
       "ReferringPhysicianName": "ZQREFDOC^Who", "PatientBirthDate": "19020304", "StudyDescription": "ZQSTUDYDESC"}


def with_phi(ds, **more):
    for keyword, value in {**PHI, **more}.items():
        setattr(ds, keyword, value)
    return ds


def write(folder: Path, name: str, ds) -> Path:
    path = folder / f"{name}.dcm"
    path.write_bytes(encoded(ds))
    return path


def canaries_in(text: str) -> list[str]:
    return [c for c in CANARIES if c.lower() in text.lower()]


def test_no_canary_reaches_a_log_line_a_record_or_the_queue(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    data = tmp_path / "data"
    # an operator's file where the folder named from PatientID must go: an OS error (ENOTDIR)
    (data / "blocked").mkdir(parents=True)
    (data / "blocked" / PATIENT_ID).write_bytes(b"not a folder")
    over_dcmtk = {
        "delivered": write(inputs, "delivered", with_phi(ct(), StationName="PLAIN")),
        "blocked": write(inputs, "blocked", with_phi(ct(), StationName="BLOCKED")),
        # a morph template puts PatientName into a date: invalid for DA, quarantined by morph
        "morph-invalid": write(inputs, "morph-invalid", with_phi(ct(), StationName="MORPHBAD")),
        # a date that is not one, read by a rule: pydicom would warn with the value
        "bad-date": write(inputs, "bad-date", with_phi(ct(), StudyDate="ZQ19020304", StationName="DATES")),
    }
    raw = {
        # a character set pydicom does not know: it warns, quoting the name, each time it decodes text
        "unknown-charset": write(inputs, "unknown-charset",
                                 with_phi(ct(), SpecificCharacterSet="ZQ_CHARSET_77", StationName="PLAIN")),
        "long-id": write(inputs, "long-id", with_phi(ct(), PatientID="ZQLONGID" * 625, StationName="PLAIN")),
    }
    for name, build in (("unknown-vr", badvalues.unknown_vr_instance),
                        ("meta-in-data-set", badvalues.file_meta_in_dataset_instance),
                        ("sop-class-number", badvalues.non_string_sop_class_instance)):
        raw[name] = build(inputs / f"{name}.dcm", **PHI, StationName="MATCHBAD")
    config = {
        "destinations": [
            {"id": "fs", "type": "filesystem", "path": "out", "name_template": "{PatientID}/{PatientName}/{SOPInstanceUID}.dcm"},
            {"id": "blocked", "type": "filesystem", "path": "blocked", "name_template": "{PatientID}/{SOPInstanceUID}.dcm"}],
        "rulesets": [{"id": "main", "mode": "FIRST_MATCH", "rules": [
            {"id": "blocked", "when": {"tag": "StationName", "value": "BLOCKED"}, "destinations": ["blocked"]},
            {"id": "morph-invalid", "when": {"tag": "StationName", "value": "MORPHBAD"},
             "actions": [{"action": "set", "tag": "StudyDate", "value": "{PatientName}"}], "destinations": ["fs"]},
            {"id": "dates", "when": {"all": [{"tag": "StationName", "value": "DATES"},
                                             {"tag": "StudyDate", "op": "ge", "value": "20000101"}]},
             "destinations": ["fs"]},
            {"id": "undecodable", "when": {"all": [{"tag": "StationName", "value": "MATCHBAD"},
                                                   {"not": {"tag": badvalues.UNKNOWN_VR_TAG, "value": "x"}}]},
             "destinations": ["fs"]},
            {"id": "all", "destinations": ["fs"]}]}],
    }
    with AxiomServer(data, config) as server:
        storescu(server.dicom_port, list(over_dcmtk.values()))
        for path in raw.values():
            assert send_raw(server.dicom_port, path) == 0x0000
        status = server.wait_idle()
        records = server.exceptions()
        log = server.log_path.read_text(errors="replace")
    errors = queue_errors(data)

    # every path above was taken: one delivered, the others recorded
    delivered = [p for p in (data / "out").rglob("*.dcm")]
    assert any("Zqcanaryfam" in str(p) for p in delivered), "the canaries do reach the destination"
    by_reason = " | ".join(sorted(r["reason"] for r in records))
    assert "ENOTDIR" in by_reason and "PatientID is 5000 bytes long" in by_reason, by_reason
    assert "action 0 (set StudyDate)" in by_reason and "cannot be decoded as VR OB_OW" in by_reason, by_reason
    assert "file meta elements" in by_reason and "SOPClassUID is encoded with the VR US" in by_reason, by_reason
    assert status["exceptions"] == len(records) == 6, by_reason
    # ... and pydicom complained about the character set (its messages, values withheld)
    assert re.search(r"pydicom.*<value withheld>", log), log[-3000:]

    assert canaries_in(log) == [], [line for line in log.splitlines() if canaries_in(line)][:5]
    for record in records:
        assert canaries_in(json.dumps(record)) == [], record
    assert all(canaries_in(error) == [] for error in errors), errors

