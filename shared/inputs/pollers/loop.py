"""The poll loop: find studies on a peer and bring their instances into the pipeline.

``poll_source(source, ingestor=..., docs=..., secrets=..., now=...)`` runs one poll of
one configured source (``shared.config.Source``) and returns a :class:`PollResult`.
Both runtimes call it unchanged: the embedded runtime from
:class:`shared.inputs.pollers.scheduler.SourceScheduler`, the GCP runtime from a scheduled
function (Cloud Scheduler -> Pub/Sub -> function, one job per source).

One run, whatever the peer:

1. list studies (QIDO-RS ``/studies`` or C-FIND STUDY), all pages, restricted to
   ``StudyDate >= watermark - lookback_days`` unless the configured query sets
   StudyDate itself;
2. when the source has ``orthanc_changes``, read Orthanc's change log since the
   previous run (:mod:`shared.inputs.pollers.orthanc`) and ask the peer, by Study Instance
   UID and with the source's query keys, about each study that received instances
   and that the date query did not return; likewise for every study an earlier run
   left unfinished;
3. skip studies seen complete before whose instance count has not grown (unless the
   change log names them);
4. for each other study, list its instances (QIDO-RS ``/studies/X/instances``, or
   C-FIND SERIES then IMAGE) and drop those already ingested from this source
   (``source_studies``, see :mod:`shared.inputs.pollers.state`; counted as ``already_had``);
5. retrieve the rest (WADO-RS, C-MOVE or C-GET), each through the Ingestor, recording
   every instance once it is durably ingested;
6. advance the watermark to the newest StudyDate processed by the date query, but
   never past a study that still has work left, and save counters, the change-log
   position and the last error.

A study that gains instances later is listed again and only the new instances are
retrieved, so each instance arrives exactly once. A peer that does not return
NumberOfStudyRelatedInstances gets its studies listed again on every run (correct,
not cheap; more so with a long lookback). The watermark is a date only, used
inclusively: same-day studies come back each run and are skipped by the seen map;
StudyTime is not used because PACS clocks and time zones make it unreliable as a
bound.

What a poller can see:

* every study whose StudyDate is at most ``lookback_days`` before the newest one
  fully processed (any peer);
* with ``orthanc_changes`` (Orthanc only; the DICOMweb standard and DIMSE have no
  change feed): every study that received an instance since the previous run,
  whatever its date;
* without a change log, a study dated more than ``lookback_days`` before the
  watermark that arrives, or gains instances, later is not found: raise
  ``lookback_days`` to the delay expected at that peer, or let a query set StudyDate
  itself (the watermark is then not used). The change log is read from its end when
  first enabled: what arrived before is left to the date query;
* studies without a StudyDate are found by the first run (no watermark yet), by the
  change log, and by queries that set StudyDate themselves; a date-bounded query
  cannot match them.
* Healthcare API stores: the date query with its lookback; their own change signal is
  the store's Pub/Sub notification, handled by :mod:`shared.inputs.healthcare_notify`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from shared.inputs.ingest import Ingestor
from shared.inputs.pollers.orthanc import OrthancChanges
from shared.inputs.pollers.state import COUNTERS, SourceBusy, SourceLease, SourceState, StudyRecord, cap_watermark, lookback
from shared.inputs.pollers.types import Backend, InstanceRef, PollResult, StudyHit
from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)

MAX_ERRORS = 20


def poll_source(source, *, ingestor: Ingestor, docs: DocumentStore, secrets: Secrets,
                now: datetime | None = None, tmp_dir: Path | None = None,
                lease_s: float = 900.0) -> PollResult:
    """One poll of ``source`` (a DicomWebSource, DimseSource or HealthcareSource).
    Never raises for peer or retrieval errors: they are in the result and in the
    state's ``last_error``, and the next run tries again."""
    now = now or datetime.now(timezone.utc)
    result = PollResult(source_id=source.id, type=source.type)
    lease = SourceLease(docs, source.id, lease_s)
    try:
        lease.acquire()
    except SourceBusy as exc:
        result.skipped = True
        result.errors.append(str(exc))
        return result
    started = time.monotonic()
    try:
        state = SourceState.load(docs, source.id)
        state.type = source.type
        try:
            backend = _backend(source, ingestor=ingestor, secrets=secrets, now=now, tmp_dir=tmp_dir)
            changes = OrthancChanges.for_source(source, secrets)
        except Exception as exc:  # bad secret reference, unreadable TLS files...
            result.errors.append(f"setup: {_describe(exc)}")
        else:
            try:
                _run(backend, changes, source, state, docs, lease, now, result)
            finally:
                backend.close()
                if changes is not None:
                    changes.close()
        result.watermark = state.watermark
        result.duration_s = round(time.monotonic() - started, 3)
        for name in COUNTERS:
            state.counters[name] += getattr(result, name)
        state.runs += 1
        state.last_run = now.isoformat()
        if result.errors:
            state.last_error = f"{now.isoformat()} {result.errors[0]}"
        elif not result.failed:
            state.last_success = now.isoformat()
        state.last_result = {k: v for k, v in result.to_dict().items() if k != "errors"}
        state.last_result["errors"] = result.errors[:5]
        state.prune(_since(source, state))
        state.save(docs)
    finally:
        lease.release()
    log.info("poll %s (%s): %d studies, %d with work, %d queued, %d retrieved, %d already had, %d failed%s",
             source.id, source.type, result.studies_seen, result.found, result.queued, result.retrieved,
             result.already_had, result.failed, f"; {result.errors[0]}" if result.errors else "")
    return result


def source_status(docs: DocumentStore, source_ids: Iterable[str] | None = None) -> dict[str, dict]:
    """Per-source state for the status API (counters, last error, watermark...)."""
    from shared.inputs.pollers.state import STATE

    if source_ids is None:
        source_ids = list(docs.list(STATE))
    return {sid: SourceState.load(docs, sid).status() for sid in source_ids}


def _backend(source, *, ingestor, secrets, now, tmp_dir) -> Backend:
    if source.type == "dicomweb_poller":
        from shared.inputs.pollers.dicomweb import DicomWebBackend

        return DicomWebBackend.for_source(source, ingestor=ingestor, secrets=secrets, now=now, tmp_dir=tmp_dir)
    if source.type == "healthcare":
        from shared.inputs.pollers.healthcare import healthcare_backend

        return healthcare_backend(source, ingestor=ingestor, secrets=secrets, now=now, tmp_dir=tmp_dir)
    if source.type == "dimse_poller":
        from shared.inputs.pollers.dimse import DimseBackend

        return DimseBackend(source, ingestor=ingestor, secrets=secrets, now=now, tmp_dir=tmp_dir)
    raise ValueError(f"unknown source type {source.type!r}")


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:500]


def _since(source, state: SourceState) -> str | None:
    """The run's lower StudyDate bound: the watermark minus the lookback window, or
    none when the configured query sets StudyDate itself."""
    if any(k.lower() in ("studydate", "00080020") for k in source.query):
        return None
    return lookback(state.watermark, source.lookback_days)


def _run(backend: Backend, changes: OrthancChanges | None, source, state: SourceState, docs: DocumentStore,
         lease: SourceLease, now: datetime, result: PollResult) -> None:
    since = _since(source, state)
    changed: set[str] = set()
    next_seq = state.changes_seq
    if changes is not None:
        try:
            if state.changes_seq is None:  # first read: the date query covers what came before
                next_seq = changes.last()
            else:
                changed, next_seq = changes.studies_since(state.changes_seq)
        except Exception as exc:  # the date query still runs; the same changes are read next time
            _error(result, f"change log: {_describe(exc)}")
    try:
        hits = list(backend.find_studies(since))
    except Exception as exc:
        log.warning("poll %s: study query failed: %s", source.id, _describe(exc))
        result.errors.append(f"query: {_describe(exc)}")
        return
    listed = {h.study_uid for h in hits}
    # studies the date-bounded query cannot return: changed ones older than ``since``,
    # and ones left unfinished by an earlier run
    by_uid = _find_by_uid([u for u in dict.fromkeys([*sorted(changed), *state.open_studies()]) if u not in listed],
                          backend, state, lease, result, changed)
    result.studies_seen = len(hits) + len(by_uid)
    newest_done, oldest_open = "", None
    for hit in sorted(hits, key=lambda h: h.study_date):
        lease.renew()
        seen = state.studies.get(hit.study_uid)
        if _unchanged(hit, seen) and hit.study_uid not in changed:
            newest_done = max(newest_done, hit.study_date)
            continue
        complete = _study(backend, source, state, docs, lease, hit, seen, result)
        if complete:
            newest_done = max(newest_done, hit.study_date)
        elif hit.study_date:
            oldest_open = min(oldest_open or hit.study_date, hit.study_date)
    for hit in by_uid:  # outside the date range: they do not move the watermark
        lease.renew()
        seen = state.studies.get(hit.study_uid)
        if not (_unchanged(hit, seen) and hit.study_uid not in changed):
            _study(backend, source, state, docs, lease, hit, seen, result)
    state.changes_seq = next_seq
    candidates = [d for d in (newest_done, oldest_open) if d]
    if candidates:
        mark = cap_watermark(min(candidates) if oldest_open else newest_done, now)
        if not state.watermark or mark > state.watermark:
            state.watermark = mark


def _unchanged(hit: StudyHit, seen: list | None) -> bool:
    """Seen complete before, and the peer reports no more instances than then."""
    return bool(seen and seen[2] and hit.count is not None and hit.count <= seen[1])


def _find_by_uid(uids: list[str], backend: Backend, state: SourceState, lease: SourceLease, result: PollResult,
                 changed: set[str]) -> list[StudyHit]:
    hits = []
    for uid in uids:
        lease.renew()
        try:
            hit = backend.find_study(uid)
        except Exception as exc:
            _error(result, f"study {uid}: query failed: {_describe(exc)}")
            date, count, _ = state.studies.get(uid) or ["", 0, 0]
            state.studies[uid] = [date, count, 0]  # open: asked for again next run
            continue
        if hit is None:  # deleted from the peer, or it no longer matches the source's query
            state.studies.pop(uid, None)
            continue
        hits.append(hit)
    return hits


def _study(backend: Backend, source, state: SourceState, docs: DocumentStore, lease: SourceLease,
           hit: StudyHit, seen: list | None, result: PollResult) -> bool:
    """Bring one study up to date; True when every listed instance is ingested."""
    record = StudyRecord(docs, source.id, hit.study_uid)
    try:
        refs = backend.list_instances(hit)
    except Exception as exc:
        result.failed += hit.count or 1
        _error(result, f"study {hit.study_uid}: instance query failed: {_describe(exc)}")
        state.studies[hit.study_uid] = [hit.study_date, seen[1] if seen else 0, 0]
        return False
    missing = [r for r in refs if not record.has(r.sop_instance_uid)]
    result.already_had += len(refs) - len(missing)
    if missing:
        result.found += 1
        result.queued += len(missing)
    reasons: list[str] = []

    def done(ref: InstanceRef) -> None:
        if not record.has(ref.sop_instance_uid):
            record.add(ref.sop_instance_uid)
            result.retrieved += 1
        lease.renew()

    def failed(ref: InstanceRef, reason: str) -> None:
        reasons.append(f"instance {ref.sop_instance_uid}: {reason}")

    try:
        if missing:
            backend.retrieve(hit, missing, whole_study=len(missing) == len(refs), done=done, failed=failed)
    except Exception as exc:
        reasons.append(f"study {hit.study_uid}: retrieval failed: {_describe(exc)}")
    finally:
        record.flush()
    left = [r for r in missing if not record.has(r.sop_instance_uid)]
    result.failed += len(left)
    if left and not reasons:
        reasons.append(f"study {hit.study_uid}: {len(left)} instance(s) not received")
    for reason in reasons[:3]:
        _error(result, reason)
    state.studies[hit.study_uid] = [hit.study_date, len(refs), 0 if left else 1]
    return not left


def _error(result: PollResult, message: str) -> None:
    log.warning("poll %s: %s", result.source_id, message)
    if len(result.errors) < MAX_ERRORS:
        result.errors.append(message)


# --- entry points shared by the runtimes ------------------------------------------------


def poll_by_id(ports, source_id: str) -> PollResult:
    """One poll of the configured source ``source_id`` with the runtime's ports (the
    scheduled ``poll`` function; the embedded scheduler calls poll_source itself)."""
    config = ports.config()
    source = next((s for s in config.sources if s.id == source_id), None)
    if source is None:
        raise KeyError(f"no source {source_id!r} in the config")
    return poll_source(source, ingestor=Ingestor(ports.blobs, config.settings.ingest_bucket), docs=ports.docs,
                       secrets=ports.secrets)
