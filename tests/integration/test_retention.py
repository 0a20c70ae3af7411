"""Retention in a running embedded runtime, fed by dcmtk storescu: delivered instances
past their age are deleted, held and failed ones stay; and a sweep over thousands of
old files runs while storescu sends, every instance still arriving (the C-STORE
latency during deletion is measured in bench/retention.py, not here)."""

from __future__ import annotations

import threading
import time

import pytest
from pydicom import dcmread

from shared.config import parse_config
from shared.runtime.local import EmbeddedRuntime
from shared.runtime.retention import DAY_S
from tests.support.dicomgen import make_ct_study
from tests.support.procs import free_port, storescu, wait_for

pytestmark = pytest.mark.dcmtk

OLD_FILES = 3000


def _config(dicom_port: int, dead_port: int) -> dict:
    return {
        "listeners": [{"id": "main", "ae_title": "AXIOM", "host": "127.0.0.1", "port": dicom_port}],
        "destinations": [
            {"id": "archive", "type": "filesystem", "path": "out"},
            {"id": "off", "type": "filesystem", "path": "off", "enabled": False},
            {"id": "down", "type": "cstore", "ae_title": "DOWN", "host": "127.0.0.1", "port": dead_port,
             "timeout_s": 2, "retry": {"max_attempts": 1}},
        ],
        "rulesets": [{"id": "main", "rules": [
            {"id": "hold", "when": {"tag": "PatientID", "value": "HOLD"}, "destinations": ["off"]},
            {"id": "fail", "when": {"tag": "PatientID", "value": "FAIL"}, "destinations": ["down"]},
            {"id": "rest", "when": {"tag": "PatientID", "value": "OK"}, "destinations": ["archive"]},
        ]}],
        # sweeps only when the test asks
        "settings": {"retention": {"received_days": 30, "processed_days": 30, "sweep_every_s": 86400}},
    }


def _uids(paths) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _old_settled_files(rt: EmbeddedRuntime, count: int) -> list:
    """Objects an earlier month left: delivered long ago, named by no message or record."""
    made = []
    for n in range(count):
        path = rt.blobs.root / "ingest" / "2020" / "01" / f"{n % 28 + 1:02d}" / f"1.2.{n}-old.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 2048)
        made.append(path)
    return made


def test_settled_objects_go_held_and_failed_stay_and_cstore_answers_during_a_sweep(tmp_path):
    dicom_port = free_port()
    rt = EmbeddedRuntime(parse_config(_config(dicom_port, free_port())), tmp_path / "data", http_port=None,
                         poll_sources=False, route_workers=2)
    ok = make_ct_study(tmp_path / "ok", 3, rows=32, columns=32, patient_id="OK")
    held = make_ct_study(tmp_path / "held", 2, rows=32, columns=32, patient_id="HOLD")
    failed = make_ct_study(tmp_path / "failed", 2, rows=32, columns=32, patient_id="FAIL")
    during = make_ct_study(tmp_path / "during", 300, rows=32, columns=32, patient_id="OK")
    out = rt.data_dir / "out"
    rt.start()
    try:
        storescu(dicom_port, [*ok, *held, *failed])
        wait_for(lambda: len(rt.docs.list("exceptions")) == 4 and len(list(out.rglob("*.dcm"))) == 3, 60,
                 what="3 delivered, 2 held and 2 failed")
        wait_for(lambda: sum(rt.queue.pending(t) for t in ("ingest", "planned", "deliver", "dead-letter")) == 0, 30,
                 what="an idle queue")
        old = _old_settled_files(rt, OLD_FILES)
        # 30 days minus 2 s on: whatever arrived more than 2 s ago is past its age
        rt.retention.clock = lambda: time.time() + 30 * DAY_S - 2
        time.sleep(2.5)

        sweeping = threading.Thread(target=lambda: (rt.retention.sweep(), rt.retention.delete_from_trash()))
        sending = threading.Thread(target=storescu, args=(dicom_port, during))
        sending.start()
        sweeping.start()
        sweeping.join(120)
        sending.join(300)
        assert not sweeping.is_alive() and not sending.is_alive()
        wait_for(lambda: len(list(out.rglob("*.dcm"))) == 303, 120, what="every instance sent during the sweep")
        assert _uids(out.rglob("*.dcm")) == _uids([*ok, *during])
        assert rt.retention.deleted >= OLD_FILES + 3  # the old files and the first delivered instances
        assert not any(p.exists() for p in old)

        wait_for(lambda: sum(rt.queue.pending(t) for t in ("ingest", "planned", "deliver", "dead-letter")) == 0, 30,
                 what="an idle queue")
        time.sleep(2.5)
        rt.retention.sweep()
        rt.retention.delete_from_trash()
        left = rt.blobs.list("ingest")
        # what stays: the held and failed instances' received objects, nothing else
        assert _uids(rt.blobs.root / "ingest" / name for name in left) == _uids([*held, *failed])
        assert rt.retention.kept == 4
        assert {r["status"] for r in rt.docs.list("exceptions").values()} == {"held", "failed"}
        assert rt.status()["retention"]["trash"] == 0
    finally:
        rt.stop()
