"""Injection through tag values into ``axiom-flow serve``: whatever a sender puts in
the fields of a name template, nothing is written outside the destination's folder or
under an unsafe GCS object name, and what cannot be made safe is refused at once with a
record naming the element, never its value."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom import dcmread

from tests.e2e.test_bad_input import send_raw
from tests.support.badvalues import ct, dead_letter_count, encoded, temporary_files
from tests.support.procs import AxiomServer, storescu

TEMPLATE = "{PatientID}/{StudyID}/{AccessionNumber}/{SOPInstanceUID}.dcm"
RETRY = {"max_attempts": 3, "initial_backoff_s": 0.2, "max_backoff_s": 0.5}
REFUSED = "the name template cannot name this instance safely: "

# name -> (tag values, what happens at the filesystem destination)
CASES = {
    "three-dot-dots": ({"PatientID": "..", "StudyID": "..", "AccessionNumber": ".."},
                       REFUSED + "PatientID is '.' or '..' (the destination folder or the one above it)"),
    "dot": ({"PatientID": "."}, REFUSED + "PatientID is '.' or '..' (the destination folder or the one above it)"),
    "dot-dot-in-the-middle": ({"StudyID": ".."},
                              REFUSED + "StudyID is '.' or '..' (the destination folder or the one above it)"),
    "absolute-and-separators": ({"PatientID": "/etc/cron.d", "StudyID": "a/../../b", "AccessionNumber": "../.."},
                                "_etc_cron.d"),  # made safe: delivered under a name inside the folder
    "multi-valued-dot-dots": ({"PatientID": "..\\.."}, ".._.."),  # two values, joined as DICOM text
    "long": ({"PatientID": "P" * 5000}, REFUSED + "PatientID is 5000 bytes long, over the file name limit of 255"),
    "nul": ({"PatientID": "A\0B"}, "A_B"),
    "a-folder-has-the-name": ({"PatientID": "DIRP"}, "destination fs cannot store this instance under its name: "
                              "a folder already has this instance's name (EISDIR: Is a directory)"),
    "a-file-where-a-folder-goes": ({"PatientID": "FILEP"}, "destination fs cannot store this instance under its "
                                   "name: a part of the name that must be a folder is a file (ENOTDIR: Not a "
                                   "directory)"),
}
SENT_RAW = {"long", "nul"}  # exact bytes (pynetdicom); the others go through dcmtk's storescu


def make_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir()
    inputs = {}
    for name, (values, _) in CASES.items():
        ds = ct(**{"PatientID": "P1", "StudyID": "S1", "AccessionNumber": "A1", **values})
        path = folder / f"{name}.dcm"
        path.write_bytes(encoded(ds))
        inputs[name] = (path, str(ds.SOPInstanceUID))
    return inputs


def test_tag_values_cannot_leave_the_destination_folder(tmp_path):
    from tests.support.gcp import FakeGCS, unique

    inputs = make_inputs(tmp_path / "in")
    bucket = unique("names")
    gcs = FakeGCS(tmp_path / "gcs-logs", tmp_path / "gcs")
    config = {"destinations": [
        {"id": "fs", "type": "filesystem", "path": "out", "name_template": TEMPLATE, "retry": RETRY},
        {"id": "gcs", "type": "gcs", "bucket": bucket, "name_template": TEMPLATE, "retry": RETRY}],
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["fs", "gcs"]}]}]}
    data = tmp_path / "data"
    out = data / "out"
    # in the folder already: a folder with the name one instance gets, a file where another needs a folder
    (out / "DIRP" / "S1" / "A1" / f"{inputs['a-folder-has-the-name'][1]}.dcm").mkdir(parents=True)
    (out / "FILEP").write_bytes(b"an operator's file")
    above = tmp_path.parent  # where '..' three times from the folder would land
    before = set(above.iterdir())
    try:
        gcs.start()
        gcs.create_buckets(bucket)
        env = {"STORAGE_EMULATOR_HOST": gcs.url, "GOOGLE_CLOUD_PROJECT": "axiom-test"}
        with AxiomServer(data, config, env=env) as server:
            storescu(server.dicom_port, [path for name, (path, _) in inputs.items() if name not in SENT_RAW])
            for name in SENT_RAW:
                assert send_raw(server.dicom_port, inputs[name][0]) == 0x0000
            server.wait_idle()
            records = {(r["destination_id"], r["sop_instance_uid"]): r for r in server.exceptions()}
            log = server.log_path.read_text(errors="replace")
        objects = [blob.name for blob in gcs.client().list_blobs(bucket)]
    finally:
        gcs.stop()

    # nothing outside the destination folder: not above the data dir, not beside it
    assert set(above.iterdir()) == before
    for _, sop_uid in inputs.values():  # under the name the template gives it, only in the folder (or in GCS)
        assert [p for p in tmp_path.rglob(f"{sop_uid}.dcm")
                if not p.is_relative_to(out) and not p.is_relative_to(tmp_path / "gcs")] == []
    written = [p for p in data.rglob("*") if p.is_file() and p.parent != data
               and not any(p.is_relative_to(data / d) for d in ("out", "blobs", "tmp"))]
    assert written == []
    assert temporary_files(out) == [] and temporary_files(data / "blobs") == []

    for name, (values, outcome) in CASES.items():
        _, sop_uid = inputs[name]
        fs_record = records.get(("fs", sop_uid))
        if outcome.startswith(("the name template", "destination fs")):
            assert fs_record is not None, name
            # refused on the first attempt: no "after N attempt(s)", no retry logged
            assert (fs_record["stage"], fs_record["status"], fs_record["reason"]) == ("route", "refused", outcome)
            assert fs_record["retry"]["topic"] == "deliver"
        else:
            assert fs_record is None, fs_record
            [delivered] = [p for p in out.rglob(f"{sop_uid}.dcm")]
            assert delivered.relative_to(out).parts[0] == outcome
            assert dcmread(delivered).SOPInstanceUID == sop_uid
        # GCS names come from the same function: the same values are refused there
        gcs_record = records.get(("gcs", sop_uid))
        if outcome.startswith("the name template"):
            assert gcs_record["status"] == "refused" and gcs_record["reason"] == outcome
        else:
            assert gcs_record is None and any(o.endswith(f"/{sop_uid}.dcm") for o in objects), name
    assert all(not o.startswith("/") and not {".", "..", ""} & set(o.split("/")) for o in objects), objects
    assert not re.search(r"deliver message \d+ attempt \d+ failed", log), "nothing refused was retried"
    assert dead_letter_count(data) == 0
    assert (out / "FILEP").read_bytes() == b"an operator's file"
