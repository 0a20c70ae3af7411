"""STOW-RS input: the Store Instances transaction of PS3.18 section 10.5.

    POST {base}/dicomweb/studies                      (PS3.18 10.5.1)
    POST {base}/dicomweb/studies/{StudyInstanceUID}
    Content-Type: multipart/related; type="application/dicom"; boundary=...
              or  application/dicom (one instance as the whole body)

The body is parsed as it arrives (``multipart``'s push parser, a streaming parser with
no dependencies) and every part goes straight to its own temporary file, so memory use
does not grow with the request. Only when the whole body has arrived intact is each
part checked (a complete DICOM Part 10 file, PS3.18 10.5.1 / PS3.10 7.1; the Study
Instance UID of the URL, when given) and handed to :class:`shared.inputs.ingest.Ingestor`,
which stores it durably before the response is sent. A request whose multipart framing
is broken, or that goes over ``stow.max_request_bytes``, stores nothing (400 / 413):
the client cannot tell which parts got through, so none do.

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

Requests must carry an API key (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``);
the accepted keys are the lines of the secret ``stow.api_keys``.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable

from flask import Blueprint, Request, Response, jsonify, request
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from shared.config import AppConfig, StowInput
from shared.dicom.io import read_instance
from shared.errors import Unprocessable
from shared.inputs.ingest import Ingestor
from shared.messages import IngestMetadata
from shared.secrets import SecretError, Secrets

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"

# Failure Reason (0008,1197) values, PS3.18 Table I.2-2
FAILURE_PROCESSING = 0x0110
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_CLASS_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_STUDY_UID_MISMATCH = 0xC409

READ_CHUNK = 256 * 1024
DRAIN_MAX_BYTES = 8 * 1024 * 1024  # read and drop at most this much of a refused body
DRAIN_MAX_S = 5.0
KEY_CACHE_S = 30.0  # how long keys read from the secret are reused

_STUDIES_PATH = re.compile(r"(?:^|/)studies(?:/(?P<study>[^/]+))?/?$")


class StowError(Exception):
    """The request as a whole is refused with HTTP ``status`` and nothing is stored."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --- the transaction ---------------------------------------------------------------------


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


def parse_content_type(value: str | None) -> tuple[str, str | None]:
    """("multipart", boundary) or ("single", None) for a STOW-RS request's Content-Type;
    :class:`StowError` 415 for media types this endpoint does not take, 400 for a
    multipart type without a boundary."""
    if not value:
        raise StowError(415, f'Content-Type is missing: send multipart/related; type="{DICOM}" or {DICOM}')
    mime, options = parse_options_header(value)
    if mime == DICOM:
        return "single", None
    if mime != "multipart/related":
        raise StowError(415, f'unsupported media type {mime!r}: send multipart/related; type="{DICOM}" or {DICOM}')
    part_type = options.get("type", DICOM).lower().strip()
    if part_type != DICOM:
        raise StowError(415, f"unsupported multipart/related type {part_type!r}: only {DICOM} parts"
                             " (Part 10 files) are accepted, not metadata and bulk data")
    boundary = options.get("boundary")
    if not boundary:
        raise StowError(400, "multipart/related without a boundary parameter")
    return "multipart", boundary


class _RelatedParser(PushMultipartParser):
    """``multipart``'s push parser for multipart/related: the stock one insists on the
    Content-Disposition of multipart/form-data; ``_create_segment`` is the documented
    hook for other multipart types."""

    def _create_segment(self, headerlist):
        return MultipartSegment(headerlist)


@dataclass
class _Spooled:
    index: int
    path: Path
    content_type: str | None


class _Reader:
    """``read(n)`` over the request body that counts bytes and stops at ``limit``."""

    def __init__(self, stream: IO[bytes], limit: int):
        self.stream = stream
        self.limit = limit
        self.total = 0

    def read(self, size: int) -> bytes:
        try:
            chunk = self.stream.read(size)
        except Exception as exc:  # client gone, broken chunked encoding, short body
            raise StowError(400, f"the request body could not be read to its end ({type(exc).__name__})") from None
        self.total += len(chunk)
        if self.total > self.limit:
            raise StowError(413, f"request body is larger than the limit of {self.limit} bytes (stow.max_request_bytes)")
        return chunk


def _spool(stream: IO[bytes], kind: str, boundary: str | None, max_bytes: int, tmp_dir: str | None) -> list[_Spooled]:
    """Write each part of the body to its own temporary file as it streams in."""
    reader = _Reader(stream, max_bytes)
    spooled: list[_Spooled] = []
    out: IO[bytes] | None = None

    def new_part(content_type: str | None) -> IO[bytes]:
        fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=tmp_dir)
        spooled.append(_Spooled(len(spooled) + 1, Path(name), content_type))
        return os.fdopen(fd, "wb")

    try:
        if kind == "single":
            out = new_part(DICOM)
            while chunk := reader.read(READ_CHUNK):
                out.write(chunk)
            out.close()
            if reader.total == 0:
                raise StowError(400, "the request body is empty")
            return spooled
        parser = _RelatedParser(boundary, max_header_count=32)
        try:
            for event in parser.parse_blocking(reader.read, READ_CHUNK):
                if isinstance(event, MultipartSegment):
                    out = new_part(event.content_type)
                elif event is None:
                    out.close()
                    out = None
                else:
                    out.write(event)
        except MultipartError as exc:
            raise StowError(400, f"malformed multipart/related body after {reader.total} bytes: {exc}") from None
        if not spooled:
            raise StowError(400, "the multipart/related body holds no parts")
        return spooled
    except BaseException:
        if out is not None:
            out.close()
        for part in spooled:
            part.path.unlink(missing_ok=True)
        raise


def store_instances(stream: IO[bytes], content_type: str | None, ports, *, config: AppConfig | None = None,
                    study_uid: str | None = None, peer_ip: str = "", max_request_bytes: int | None = None,
                    tmp_dir: str | None = None) -> StowResult:
    """Store the instances of one STOW-RS request body read from ``stream``.

    ``ports`` is a :class:`shared.stages.Ports` (blobs, docs, config are used). Raises
    :class:`StowError` when the request as a whole is refused; then nothing is stored.
    Otherwise every part is either in the ingest bucket or listed as failed."""
    config = config or ports.config()
    kind, boundary = parse_content_type(content_type)
    limit = max_request_bytes or config.stow.max_request_bytes
    spooled = _spool(stream, kind, boundary, limit, tmp_dir)
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


def _store_part(part: _Spooled, ingestor: Ingestor, ports, config: AppConfig, study_uid: str | None,
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


def _quarantine(part: _Spooled, res: PartResult, ports, config: AppConfig, meta: IngestMetadata) -> None:
    """Keep an unreadable part in the quarantine bucket with an exception record. Best
    effort: the client has already been told the part failed and still has it."""
    from shared.stages import record_exception  # stages imports the destinations; keep import light

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


# --- HTTP: API keys, the Flask handler, the blueprint, the Cloud Function body ---------------


class ApiKeys:
    """The keys of ``stow.api_keys`` (one per line; blank lines and ``#`` comments
    ignored), read through the Secrets port and reused for ``ttl_s`` seconds."""

    def __init__(self, secrets: Secrets | None = None, ttl_s: float = KEY_CACHE_S):
        self.secrets = secrets or Secrets()
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[bytes]]] = {}

    def keys(self, ref: str) -> list[bytes]:
        with self._lock:
            hit = self._cache.get(ref)
            if hit and time.monotonic() - hit[0] < self.ttl_s:
                return hit[1]
        text = self.secrets.text(ref)
        keys = [line.strip().encode() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        with self._lock:
            self._cache[ref] = (time.monotonic(), keys)
        return keys

    def check(self, ref: str, presented: str) -> bool:
        given = presented.encode()
        ok = False
        for key in self.keys(ref):
            ok |= hmac.compare_digest(key, given)  # no early exit: time does not tell which key
        return ok


_DEFAULT_KEYS = ApiKeys()


def _presented_key(req: Request) -> str:
    key = req.headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    response = jsonify({"status": status, "error": message})
    response.status_code = status
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


def _drain(stream: IO[bytes]) -> None:
    """Read and drop (a bounded amount of) a refused body, so that a client still
    sending it gets to read our answer instead of a connection reset."""
    deadline = time.monotonic() + DRAIN_MAX_S
    left = DRAIN_MAX_BYTES
    try:
        while left > 0 and time.monotonic() < deadline:
            chunk = stream.read(min(READ_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
    except Exception:
        return


def _authenticate(req: Request, stow: StowInput, keys: ApiKeys) -> Response | None:
    challenge = {"WWW-Authenticate": 'Bearer realm="axiom-flow STOW-RS"'}
    if stow.api_keys is None:
        return _error(401, "STOW-RS has no API keys configured (stow.api_keys): every request is refused", challenge)
    presented = _presented_key(req)
    if not presented:
        return _error(401, "an API key is required: send it as X-API-Key or Authorization: Bearer", challenge)
    try:
        ok = keys.check(stow.api_keys, presented)
    except (SecretError, OSError) as exc:
        log.error("STOW-RS: API keys unreadable: %s", exc)
        return _error(503, "API keys could not be read; see the server log")
    if not ok:
        log.warning("STOW-RS: wrong API key from %s", req.remote_addr)
        return _error(401, "the API key is not valid", challenge)
    return None


def refusal(req: Request, ports, *, keys: ApiKeys | None = None) -> Response | None:
    """The answer to a request that is refused from its headers alone, before any of
    its body is read: STOW-RS disabled (404), no or a wrong API key (401), keys
    unreadable (503), a Content-Length over ``stow.max_request_bytes`` (413), a media
    type this endpoint does not take (415, 400). None: read the body."""
    keys = keys or _DEFAULT_KEYS
    config = ports.config()
    if not config.stow.enabled:
        return _error(404, "STOW-RS is disabled here (stow.enabled: false)")
    denied = _authenticate(req, config.stow, keys)
    if denied is not None:
        return denied
    limit = config.stow.max_request_bytes
    try:
        if req.content_length is not None and req.content_length > limit:
            raise StowError(413, f"request body of {req.content_length} bytes is larger than the limit of"
                                 f" {limit} bytes (stow.max_request_bytes)")
        parse_content_type(req.headers.get("Content-Type"))
    except StowError as exc:
        log.warning("STOW-RS from %s refused: %d %s", req.remote_addr, exc.status, exc.message)
        return _error(exc.status, exc.message)
    return None


def handle_stow(req: Request, ports, *, study_uid: str | None = None, keys: ApiKeys | None = None) -> Response:
    """One STOW-RS request, from headers to response. ``ports``: a
    :class:`shared.stages.Ports` (or a callable returning one)."""
    ports = ports() if callable(ports) else ports
    keys = keys or _DEFAULT_KEYS
    refused = refusal(req, ports, keys=keys)
    if refused is not None:
        _drain(req.stream)
        return refused
    config = ports.config()
    limit = config.stow.max_request_bytes
    try:
        result = store_instances(req.stream, req.headers.get("Content-Type"), ports, config=config,
                                 study_uid=study_uid, peer_ip=req.remote_addr or "", max_request_bytes=limit)
    except StowError as exc:
        log.warning("STOW-RS from %s refused: %d %s", req.remote_addr, exc.status, exc.message)
        _drain(req.stream)
        return _error(exc.status, exc.message)
    return Response(_json_bytes(result.to_json()), status=result.http_status, content_type=DICOM_JSON)


def _json_bytes(body: dict) -> bytes:
    import json

    return json.dumps(body, separators=(",", ":")).encode()


def stow_http_function(req: Request, ports, *, keys: ApiKeys | None = None) -> Response:
    """The body of a functions-framework HTTP function: routes ``POST .../studies`` and
    ``POST .../studies/{StudyInstanceUID}`` (any prefix) to :func:`handle_stow`."""
    m = _STUDIES_PATH.search(req.path)
    if m is None:
        return _error(404, "not found: POST to .../studies or .../studies/{StudyInstanceUID}")
    if req.method != "POST":
        return _error(405, "method not allowed: STOW-RS takes POST", {"Allow": "POST"})
    return handle_stow(req, ports, study_uid=m.group("study"), keys=keys)


def stow_blueprint(ports: Callable[[], object] | object, secrets: Secrets | None = None,
                   url_prefix: str = "/dicomweb") -> Blueprint:
    """``POST {url_prefix}/studies[/{StudyInstanceUID}]`` for ``axiom-flow serve``.
    ``bp.early_answer(request)``: :func:`refusal` with this blueprint's keys, for a
    server that can answer before reading the body (``shared/http.py``)."""
    bp = Blueprint("stow", __name__, url_prefix=url_prefix)
    keys = ApiKeys(secrets)
    bp.early_answer = lambda req: refusal(req, ports() if callable(ports) else ports, keys=keys)

    @bp.post("/studies")
    def store():
        return handle_stow(request, ports, keys=keys)

    @bp.post("/studies/<study_uid>")
    def store_in_study(study_uid: str):
        return handle_stow(request, ports, study_uid=study_uid, keys=keys)

    return bp
