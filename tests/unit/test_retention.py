"""Retention in the embedded runtime (shared/runtime/retention.py): an object past its
age is deleted only when settled (no queued message, no open exception record names
it); held, failed, refused and queued ones stay, archived ones go; quarantine has its
own age; a crash after the move leaves nothing needed pointing at a deleted file."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from shared import exceptions
from shared.config import parse_config
from shared.messages import TOPIC_DEAD_LETTER, TOPIC_DELIVER, BlobRef, DeadLetter, Delivery, IngestMetadata
from shared.runtime.local import EmbeddedRuntime
from shared.runtime.retention import DAY_S, Retention

TODAY = f"{datetime.now(timezone.utc):%Y/%m/%d}"


def _config(**retention) -> dict:
    return {"listeners": [], "destinations": [{"id": "off", "type": "filesystem", "path": "off", "enabled": False}],
            "settings": {"retention": retention} if retention else {}}


@pytest.fixture
def runtime(tmp_path):
    rt = EmbeddedRuntime(parse_config(_config()), tmp_path / "data", http_port=None, poll_sources=False)
    yield rt
    rt.stop()


def _later(days: float):
    return lambda: time.time() + days * DAY_S


def _put(rt, bucket: str, name: str, *, notify: bool = False) -> BlobRef:
    """An object as the pipeline leaves it; without ``notify``, as if match had run."""
    saved = rt.blobs.on_finalize
    rt.blobs.on_finalize = saved if notify else None
    src = rt.data_dir / "tmp" / "src.dcm"
    src.write_bytes(b"x" * 1000)
    try:
        return rt.blobs.put_file(bucket, name, src, {"axiom-source_type": "cstore"}, move=True)
    finally:
        rt.blobs.on_finalize = saved


def _instance(rt, n: int) -> Delivery:
    """A received object and its processed object, and the delivery between them."""
    source = _put(rt, "ingest", f"{TODAY}/1.2.{n}-a.dcm")
    blob = _put(rt, "processed", f"{TODAY}/1.2.{n}-sha.dcm")
    return Delivery(sop_instance_uid=f"1.2.{n}", destination_id="off", blob=blob, sha256="0" * 64, source=source,
                    ingest=IngestMetadata(source_type="cstore"))


def _sweep(rt, days: float) -> dict:
    rt.retention.clock = _later(days)
    moved = rt.retention.sweep()
    rt.retention.delete_from_trash()
    return moved


def _exists(rt, d: Delivery) -> tuple[bool, bool]:
    return rt.blobs.exists(d.source), rt.blobs.exists(d.blob)


def test_a_settled_instance_is_deleted_after_its_age_not_before(runtime):
    d = _instance(runtime, 1)
    assert _sweep(runtime, 29) == {}
    assert _exists(runtime, d) == (True, True)
    assert _sweep(runtime, 31) == {"ingest": 1, "processed": 1}
    assert _exists(runtime, d) == (False, False)
    assert runtime.blobs.metadata(d.source) == {}
    status = runtime.status()["retention"]
    assert (status["deleted"], status["bytes_freed"], status["trash"]) == (2, 2000, 0)
    assert status["last_sweep"].startswith(datetime.fromtimestamp(_later(31)(), timezone.utc).strftime("%Y-%m-%d"))


def test_held_failed_and_refused_instances_stay_until_archived(runtime):
    held, failed, refused = (_instance(runtime, n) for n in (1, 2, 3))
    held_id = exceptions.hold_delivery(runtime.ports, held, "destination off is disabled", stage="route")
    ids = [exceptions.record_exception(runtime.ports, stage="route", status=status, reason="peer said no",
                                       sop_instance_uid=d.sop_instance_uid, destination_id="off",
                                       topic=TOPIC_DELIVER, body=d.model_dump_json())
           for status, d in (("failed", failed), ("refused", refused))]
    assert _sweep(runtime, 400) == {"ingest": 0, "processed": 0}
    assert [_exists(runtime, d) for d in (held, failed, refused)] == [(True, True)] * 3
    assert runtime.retention.kept == 6
    exceptions.archive_exception(runtime.ports, held_id)
    exceptions.archive_exception(runtime.ports, ids[0])
    assert _sweep(runtime, 400) == {"ingest": 2, "processed": 2}
    assert [_exists(runtime, d) for d in (held, failed, refused)] == [(False, False), (False, False), (True, True)]


def test_a_record_naming_only_the_received_object_keeps_it(runtime):
    """A held plan (no rule matched) or a dead-lettered ingest message: ``blob`` only."""
    d = _instance(runtime, 1)
    exceptions.record_exception(runtime.ports, stage="match", status="held", reason="no rule matched",
                                blob=d.source, sop_instance_uid=d.sop_instance_uid)
    assert _sweep(runtime, 40) == {"ingest": 0, "processed": 1}
    assert _exists(runtime, d) == (True, False)


def test_a_received_object_not_yet_matched_stays(runtime):
    """Its OBJECT_FINALIZE message is queued until match acknowledges it."""
    ref = _put(runtime, "ingest", f"{TODAY}/1.2.4-a.dcm", notify=True)
    assert _sweep(runtime, 40) == {"ingest": 0}
    assert runtime.blobs.exists(ref)


def test_queued_messages_keep_their_objects(runtime):
    """A delivery waiting for its retry, and a dead letter not yet recorded."""
    waiting, dead = _instance(runtime, 1), _instance(runtime, 2)
    runtime.queue.publish(TOPIC_DELIVER, waiting)
    runtime.queue.publish(TOPIC_DEAD_LETTER, DeadLetter(topic=TOPIC_DELIVER, body=dead.model_dump_json(), attempts=5))
    assert _sweep(runtime, 40) == {"ingest": 0, "processed": 0}
    assert [_exists(runtime, d) for d in (waiting, dead)] == [(True, True)] * 2


def test_a_retried_record_whose_delivery_settled_lets_its_objects_go(runtime):
    d = _instance(runtime, 1)
    record_id = exceptions.hold_delivery(runtime.ports, d, "destination off is disabled", stage="route")
    exceptions.retry_exception(runtime.ports, record_id)
    assert _sweep(runtime, 40) == {"ingest": 0, "processed": 0}  # its message is queued
    runtime.queue._work_db.conn().execute("DELETE FROM messages")  # delivered: the route worker acknowledged it
    assert _sweep(runtime, 40) == {"ingest": 1, "processed": 1}


def test_quarantine_has_its_own_age_whatever_its_record(runtime):
    bad = _put(runtime, "ingest", f"{TODAY}/1.2.9-bad.dcm")
    kept = exceptions.quarantine(runtime.ports, bad, "missing SOPClassUID", stage="match")
    assert _sweep(runtime, 60) == {}
    assert runtime.blobs.exists(kept)
    assert _sweep(runtime, 91) == {"quarantine": 1}
    assert not runtime.blobs.exists(kept)
    [record] = exceptions.list_exceptions(runtime.ports)
    assert record["status"] == "quarantined"  # the record says why; the object is gone


def test_zero_or_null_days_keep_objects_forever(tmp_path):
    rt = EmbeddedRuntime(parse_config(_config(received_days=0, processed_days=None)), tmp_path / "data",
                         http_port=None, poll_sources=False)
    try:
        d = _instance(rt, 1)
        assert _sweep(rt, 10_000) == {}
        assert _exists(rt, d) == (True, True)
    finally:
        rt.stop()


def test_later_date_directories_are_not_listed(runtime):
    """Objects arrive under today's date: a sweep never reads those directories (the
    clock here says 40 days later, so today's objects are past their age; a directory
    dated after the cut-off day is skipped even though its file is old enough)."""
    future = _put(runtime, "ingest", "2999/01/01/1.2.5-a.dcm")
    older_than = _later(40)() - 30 * DAY_S
    assert [n for n, _ in runtime.blobs.old_objects("ingest", older_than)] == []
    today = _put(runtime, "ingest", f"{TODAY}/1.2.6-a.dcm")
    assert [n for n, _ in runtime.blobs.old_objects("ingest", older_than)] == [today.name]
    assert runtime.blobs.exists(future)


def test_emptied_date_directories_before_the_cut_off_day_are_removed(runtime):
    old = _put(runtime, "ingest", "2020/01/02/1.2.7-a.dcm")
    d = _instance(runtime, 8)
    cut_off = datetime.fromtimestamp(_later(1)(), timezone.utc)
    _put(runtime, "ingest", f"{cut_off:%Y/%m}/01/1.2.9-a.dcm")
    _sweep(runtime, 31)
    assert not (runtime.blobs.root / "ingest" / "2020").exists()
    assert not runtime.blobs.exists(old) and _exists(runtime, d) == (False, False)
    # the cut-off day's month stays: days are still added to it
    assert (runtime.blobs.root / "ingest" / f"{cut_off:%Y/%m}").is_dir()


def test_a_crash_after_the_move_leaves_the_trash_to_the_next_run(runtime):
    d = _instance(runtime, 1)
    runtime.retention.clock = _later(31)
    runtime.retention.sweep()  # moved, then the process died before unlinking
    assert _exists(runtime, d) == (False, False) and runtime.blobs.metadata(d.source) == {}
    restarted = Retention(runtime.blobs, runtime.docs, runtime.queue, lambda: runtime.config().settings,
                          runtime.data_dir / "trash")
    assert restarted.trash_count() == 2
    assert restarted.delete_from_trash(limit=1) == 1 and restarted.trash_count() == 1
    restarted.delete_from_trash()
    assert (restarted.deleted, restarted.bytes_freed, restarted.trash_count()) == (2, 2000, 0)


def test_an_object_without_metadata_after_a_crash_is_taken_by_the_next_sweep(runtime):
    """take_out forgets the metadata first: a crash before the rename leaves the file."""
    d = _instance(runtime, 1)
    runtime.blobs._forget_metadata(d.source.bucket, d.source.name)
    assert _sweep(runtime, 31) == {"ingest": 1, "processed": 1}


def test_the_background_loop_unlinks_at_the_configured_rate(tmp_path):
    rt = EmbeddedRuntime(parse_config(_config(max_deletes_per_s=20, sweep_every_s=3600)), tmp_path / "data",
                         http_port=None, poll_sources=False)
    try:
        for n in range(30):
            _instance(rt, n)
        rt.retention.clock = _later(31)
        rt.start()
        started = time.monotonic()
        while rt.retention.deleted < 60 and time.monotonic() - started < 20:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert rt.retention.deleted == 60
        assert elapsed > 2.0  # 60 unlinks at 20/s take about 3 s, not a burst
        assert rt.blobs.list("ingest") == [] and rt.blobs.list("processed") == []
    finally:
        rt.stop()
