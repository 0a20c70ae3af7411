"""STOW-RS input: the Store Instances transaction of PS3.18 section 10.5.

    POST {base}/dicomweb/studies                      (PS3.18 10.5.1)
    POST {base}/dicomweb/studies/{StudyInstanceUID}
    Content-Type: multipart/related; type="application/dicom"; boundary=...
              or  application/dicom (one instance as the whole body)

The body is read as it arrives, every part straight to its own temporary file
(:mod:`shared.inputs.stow.spool`), so memory use does not grow with the request. Only
when the whole body has arrived intact is each part checked (a complete DICOM Part 10
file, PS3.18 10.5.1 / PS3.10 7.1; the Study Instance UID of the URL, when given) and
handed to :class:`shared.inputs.ingest.Ingestor`, which stores it durably before the
response is sent. A request whose multipart framing is broken, or that goes over
``stow.max_request_bytes``, stores nothing (400 / 413): the client cannot tell which
parts got through, so none do.

Response (PS3.18 10.5.3, Store Instances Response Module of Annex I, as DICOM JSON):
200 every instance stored; 202 some stored, some failed; 409 none stored; Referenced
SOP Sequence (0008,1199) lists the stored ones, Failed SOP Sequence (0008,1198) the
others with a Failure Reason (0008,1197) from PS3.18 Table I.2-2:

    0xC000  Error: cannot understand - the part is not a complete DICOM Part 10 file
            (no file meta, truncated, corrupt) or is not application/dicom
    0xA900  Error: data set does not match SOP class - no SOP Class/Instance UID
    0xC409  Study Instance UID differs from the one in the URL (implementation
            specific, the value dcm4chee uses; Table I.2-2 allows additional codes)
    0x0110  Processing failure - storing failed on our side; send it again
    0xA700  Refused: out of resources - no space left to store it

A part that is not a readable DICOM file is also kept in the quarantine bucket with an
exception record (stage ``stow``), so an operator can see what a sender is sending.

Requests must carry an API key (:mod:`shared.inputs.stow.auth`); HTTP is
:mod:`shared.inputs.stow.http`.
"""

from __future__ import annotations

import errno
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from shared.config import AppConfig
from shared.dicom.io import read_instance
from shared.errors import Unprocessable
from shared.exceptions import record_exception
from shared.inputs.ingest import Ingestor
from shared.inputs.stow.spool import DICOM, SpooledPart, parse_content_type, spool_body
from shared.messages import IngestMetadata

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"

# Failure Reason (0008,1197) values, PS3.18 Table I.2-2
FAILURE_PROCESSING = 0x0110
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_CLASS_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_STUDY_UID_MISMATCH = 0xC409


@dataclass
class PartResult:
    index: int  # 1-based position of the part in the request
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    failure: int | None = None  # Failure Reason; None: stored
    reason: str = ""
    blob: str = ""  # where it went: ingest object, or the quarantined copy


@dataclass
class StowResult:
    parts: list[PartResult] = field(default_factory=list)

    @property
    def stored(self) -> list[PartResult]:
        return [p for p in self.parts if p.failure is None]

    @property
    def failed(self) -> list[PartResult]:
        return [p for p in self.parts if p.failure is not None]

    @property
    def http_status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def to_json(self) -> dict:
        """The Store Instances Response Module (PS3.18 Table I.1-1) in DICOM JSON
        (PS3.18 Annex F). Retrieve URL is type 2 and left empty: no WADO-RS here."""

        def ref(part: PartResult) -> dict:
            return {"00081150": _ui(part.sop_class_uid), "00081155": _ui(part.sop_instance_uid)}

        body: dict = {"00081190": {"vr": "UR"}}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {**ref(p), "00081197": {"vr": "US", "Value": [p.failure]}} for p in self.failed]}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [
                {**ref(p), "00081190": {"vr": "UR"}} for p in self.stored]}
        return body


def _ui(value: str) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def store_instances(stream: IO[bytes], content_type: str | None, ports, *, config: AppConfig | None = None,
                    study_uid: str | None = None, peer_ip: str = "", max_request_bytes: int | None = None,
                    tmp_dir: str | None = None) -> StowResult:
    """Store the instances of one STOW-RS request body read from ``stream``.

    ``ports`` is a :class:`shared.ports.Ports` (blobs, docs, config, secrets are used). Raises
    :class:`shared.inputs.stow.spool.StowError` when the request as a whole is refused; then nothing is stored.
    Otherwise every part is either in the ingest bucket or listed as failed."""
    config = config or ports.config()
    kind, boundary = parse_content_type(content_type)
    limit = max_request_bytes or config.stow.max_request_bytes
    spooled = spool_body(stream, kind, boundary, limit, tmp_dir)
    ingestor = Ingestor(ports.blobs, config.settings.ingest_bucket)
    result = StowResult()
    try:
        for part in spooled:
            result.parts.append(_store_part(part, ingestor, ports, config, study_uid, peer_ip))
    finally:
        for part in spooled:
            part.path.unlink(missing_ok=True)
    log.info("STOW-RS from %s: %d stored, %d failed", peer_ip or "?", len(result.stored), len(result.failed))
    return result


def _store_part(part: SpooledPart, ingestor: Ingestor, ports, config: AppConfig, study_uid: str | None,
                peer_ip: str) -> PartResult:
    res = PartResult(index=part.index)
    meta = IngestMetadata(source_type="stow", source_id=config.stow.id, peer_ip=peer_ip)
    if part.content_type not in (None, DICOM):
        res.failure, res.reason = FAILURE_CANNOT_UNDERSTAND, f"part media type {part.content_type!r} is not {DICOM}"
        log.warning("STOW-RS part %d refused: %s", part.index, res.reason)
        return res
    try:
        ds = read_instance(part.path)
    except Unprocessable as exc:
        res.sop_class_uid, res.sop_instance_uid = _meta_uids(part.path)
        res.reason = str(exc) if part.path.stat().st_size else "empty part"
        res.failure = FAILURE_SOP_CLASS_MISMATCH if res.reason.startswith("missing required") else FAILURE_CANNOT_UNDERSTAND
        _quarantine(part, res, ports, config, meta)
        return res
    res.sop_class_uid, res.sop_instance_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    if study_uid is not None and str(ds.get("StudyInstanceUID", "")) != study_uid:
        res.failure, res.reason = FAILURE_STUDY_UID_MISMATCH, "Study Instance UID differs from the one in the URL"
        log.warning("STOW-RS part %d (%s) refused: %s", part.index, res.sop_instance_uid, res.reason)
        return res
    del ds
    meta = meta.model_copy(update={"sop_instance_uid": res.sop_instance_uid, "sop_class_uid": res.sop_class_uid})
    try:
        res.blob = str(ingestor.ingest_file(part.path, meta, move=True))
    except Exception as exc:
        res.failure = FAILURE_OUT_OF_RESOURCES if getattr(exc, "errno", None) == errno.ENOSPC else FAILURE_PROCESSING
        res.reason = f"could not store: {type(exc).__name__}"
        log.exception("STOW-RS part %d (%s): storing in the ingest bucket failed", part.index, res.sop_instance_uid)
    return res


def _meta_uids(path: Path) -> tuple[str, str]:
    """SOP Class / Instance UID from the file meta of an unreadable part, if it has one."""
    try:
        from pydicom.filereader import read_file_meta_info

        fm = read_file_meta_info(path)
        return str(fm.get("MediaStorageSOPClassUID", "")), str(fm.get("MediaStorageSOPInstanceUID", ""))
    except Exception:
        return "", ""


def _quarantine(part: SpooledPart, res: PartResult, ports, config: AppConfig, meta: IngestMetadata) -> None:
    """Keep an unreadable part in the quarantine bucket with an exception record. Best
    effort: the client has already been told the part failed and still has it."""

    now = datetime.now(timezone.utc)
    name = f"stow/{now:%Y/%m/%d}/{uuid.uuid4().hex}.dcm"
    metadata = {**meta.model_copy(update={"sop_instance_uid": res.sop_instance_uid,
                                          "sop_class_uid": res.sop_class_uid}).to_blob_metadata(),
                "axiom-failure-reason": f"0x{res.failure:04X}"}
    try:
        ref = ports.blobs.put_file(config.settings.quarantine_bucket, name, part.path, metadata, move=True)
        res.blob = str(ref)
        record_exception(ports, stage="stow", status="quarantined",
                         reason=f"STOW-RS part {part.index} refused (0x{res.failure:04X}): {res.reason}",
                         quarantined_as=ref, source_id=meta.source_id, peer_ip=meta.peer_ip,
                         sop_instance_uid=res.sop_instance_uid or None)
    except Exception:
        log.exception("STOW-RS part %d: could not quarantine the refused part", part.index)
