"""Input pydicom cannot handle, sent to ``axiom-flow serve``: quarantined on the first
attempt with a reason (not retried into a dead letter and left in the ingest store),
and a write that cannot succeed under its name is refused at once, leaving no
temporary file."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.test_bad_input import dataset_bytes, send_raw
from tests.support import badvalues
from tests.support.badvalues import dead_letter_count, queue_errors, temporary_files
from tests.support.procs import AxiomServer

UNDECODABLE = "element (7019,1080) cannot be decoded as VR OB_OW (PS3.5 6.2; NotImplementedError)"
# name -> (builder, StationName, stage, reason)
CASES = {
    "unknown-vr-read-by-a-rule": (badvalues.unknown_vr_instance, "MATCH", "match", UNDECODABLE),
    "unknown-vr-changed-by-an-action": (badvalues.unknown_vr_instance, "MORPH", "morph", UNDECODABLE),
    "file-meta-in-the-data-set": (badvalues.file_meta_in_dataset_instance, "MATCH", "match",
                                  "the data set holds file meta elements ((0002,0016)), which belong in the file "
                                  "meta information only (PS3.10 7.1)"),
    "sop-class-uid-as-a-number": (badvalues.non_string_sop_class_instance, "MATCH", "match",
                                  "SOPClassUID is encoded with the VR US, not UI (PS3.6)"),
}


def test_undecodable_input_is_quarantined_at_first_sight(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sent = {name: build(inputs / f"{name}.dcm", StationName=station) for name, (build, station, _, _) in CASES.items()}
    config = {
        "destinations": [{"id": "fs", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "main", "mode": "FIRST_MATCH", "rules": [
            # an action reads the value: morph meets it
            {"id": "morph", "when": {"tag": "StationName", "value": "MORPH"},
             "actions": [{"action": "suffix", "tag": badvalues.UNKNOWN_VR_TAG, "value": "x"}],
             "destinations": ["fs"]},
            # a condition reads the value: match meets it
            {"id": "match", "when": {"all": [{"tag": "StationName", "value": "MATCH"},
                                             {"not": {"tag": badvalues.UNKNOWN_VR_TAG, "value": "x"}}]},
             "actions": [{"action": "set", "tag": "InstitutionName", "value": "ROUTED"}],
             "destinations": ["fs"]}]}]}
    with AxiomServer(tmp_path / "data", config) as server:
        for path in sent.values():
            assert send_raw(server.dicom_port, path) == 0x0000  # stored first, judged after
        status = server.wait_idle()
        records = server.exceptions()
        log = server.log_path.read_text(errors="replace")
    data = server.data_dir

    assert status["exceptions"] == len(CASES) == len(records)
    quarantined = sorted((data / "blobs" / "quarantine").rglob("*.dcm"))
    for name, (_, _, stage, reason) in CASES.items():
        [record] = [r for r in records if r["reason"] == reason and r["stage"] == stage
                    and dataset_bytes(Path(data / "blobs" / r["quarantined_as"].removeprefix("gs://").split("#")[0]))
                    == dataset_bytes(sent[name])]
        assert record["status"] == "quarantined", name
    # kept as sent, gone from the ingest store, nothing delivered
    assert sorted(dataset_bytes(p) for p in quarantined) == sorted(dataset_bytes(p) for p in sent.values())
    assert list((data / "blobs" / "ingest").rglob("*.dcm")) == []
    assert not (data / "out").exists() or list((data / "out").rglob("*")) == []
    # on the first attempt: no retry logged, nothing dead-lettered, no error left in the queue
    assert not re.search(r"message \d+ attempt \d+ failed", log), log
    assert dead_letter_count(data) == 0 and queue_errors(data) == []
    assert temporary_files(data / "blobs") == []


def test_a_name_that_is_a_folder_is_refused_once_and_leaves_no_temporary_file(tmp_path):
    """With ``on_conflict: overwrite`` the file is linked under a temporary name and
    renamed over the target: the rename fails (EISDIR) and the link is removed."""
    ds = badvalues.ct()
    source, sop_uid = tmp_path / "ct.dcm", str(ds.SOPInstanceUID)
    source.write_bytes(badvalues.encoded(ds))
    config = {"destinations": [{"id": "fs", "type": "filesystem", "path": "out", "on_conflict": "overwrite",
                                "name_template": "{SOPInstanceUID}.dcm", "retry": {"max_attempts": 3}}],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["fs"]}]}]}
    (tmp_path / "data" / "out" / f"{sop_uid}.dcm").mkdir(parents=True)
    with AxiomServer(tmp_path / "data", config) as server:
        assert send_raw(server.dicom_port, source) == 0x0000
        server.wait_idle()
        [record] = server.exceptions()
        log = server.log_path.read_text(errors="replace")
    assert (record["stage"], record["status"], record["destination_id"]) == ("route", "refused", "fs")
    assert record["reason"] == ("destination fs cannot store this instance under its name: a folder already has "
                                "this instance's name (EISDIR: Is a directory)")
    assert not re.search(r"deliver message \d+ attempt \d+ failed", log)
    assert [p.name for p in (tmp_path / "data" / "out").iterdir()] == [f"{sop_uid}.dcm"]
    assert temporary_files(tmp_path / "data") == []
