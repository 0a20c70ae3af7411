"""DICOMweb poller: QIDO-RS (PS3.18 10.6) to find studies and their instances, WADO-RS
(PS3.18 10.4) to retrieve each instance as stored.

Instances are retrieved one by one from
``{base}/studies/{st}/series/{se}/instances/{sop}`` with
``Accept: multipart/related; type="application/dicom"; transfer-syntax=*`` (``*``: the
transfer syntax the server stored, PS3.18 8.7.3.5.2), so pixel data arrives as it was
stored, never transcoded, and ``Accept-Encoding: identity`` (a gzip body would be
inflated in unbounded pieces). Each multipart body is parsed as it streams in
(:mod:`shared.dicomweb.multipart`), straight to a temporary file (memory does not grow
with instance size), checked (complete Part 10 structure, the SOP Instance UID asked
for) and handed to the Ingestor. Per instance rather than per study: a failure costs
one instance, the ingested ones are recorded one by one, and a study that later gains instances retrieves only the new ones.

Servers that refuse ``transfer-syntax=*`` (406/400) are asked again without the
parameter; the server then picks the transfer syntax (PS3.18 says: as stored if the
client accepts it, Explicit VR Little Endian otherwise), which is noted in the result
as a warning in the log.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import httpx
from pydicom.filereader import read_file_meta_info

from shared.dicom.io import check_complete
from shared.dicomweb.multipart import AS_SENT, DICOM, MalformedMultipart, Part, boundary_of, content_coding, discard, spool_parts
from shared.errors import Unprocessable
from shared.httpauth import httpx_auth
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers.types import Done, Failed, InstanceRef, StudyHit
from shared.messages import IngestMetadata

log = logging.getLogger(__name__)

ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_DEFAULT = 'multipart/related; type="application/dicom"'
DICOM_JSON = "application/dicom+json"

STUDY_INCLUDE = ("StudyDate", "StudyTime", "NumberOfStudyRelatedInstances")
INSTANCE_INCLUDE = ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
MAX_CONSECUTIVE_FAILURES = 5
MAX_PAGES = 100_000


class RetrieveError(RuntimeError):
    pass


# --- DICOM JSON ----------------------------------------------------------------------


def json_value(item: dict, tag: str) -> str | int | None:
    """First value of ``tag`` (8 hex digits) in a DICOM JSON object (PS3.18 F.2)."""
    element = item.get(tag) or {}
    values = element.get("Value") or []
    return values[0] if values else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- client --------------------------------------------------------------------------


class DicomWebClient:
    """QIDO-RS and WADO-RS against one DICOMweb base URL (e.g. ``http://pacs/dicom-web``)."""

    def __init__(self, base_url: str, *, auth: httpx.Auth | None = None, headers: dict[str, str] | None = None,
                 timeout_s: float = 60.0, tmp_dir: Path | None = None):
        self.base_url = base_url.rstrip("/")
        self.tmp_dir = tmp_dir
        self.http = httpx.Client(auth=auth, headers=headers or {}, timeout=httpx.Timeout(timeout_s),
                                 follow_redirects=True)
        self._as_stored = True

    def close(self) -> None:
        self.http.close()

    def qido(self, path: str, params: list[tuple[str, str]], *, page_size: int) -> Iterator[dict]:
        """Every result of a QIDO-RS search, ``limit``/``offset`` page by page until a
        short page. A server that ignores ``offset`` (answers the same page again) is
        caught instead of looping forever."""
        offset, previous = 0, None
        for _ in range(MAX_PAGES):
            page_params = [*params, ("limit", str(page_size)), ("offset", str(offset))]
            r = self.http.get(f"{self.base_url}{path}", params=page_params, headers={"Accept": DICOM_JSON})
            if r.status_code == 204:
                return
            r.raise_for_status()
            page = r.json() if r.content.strip() else []
            if not isinstance(page, list):
                raise RetrieveError(f"QIDO-RS {path}: expected a JSON array")
            if page and page == previous:
                raise RetrieveError(f"QIDO-RS {path}: the server ignores offset (same page twice)")
            yield from page
            if len(page) < page_size:
                return
            previous = page
            offset += len(page)
        raise RetrieveError(f"QIDO-RS {path}: more than {MAX_PAGES} pages")

    def instance_url(self, ref: InstanceRef) -> str:
        return (f"{self.base_url}/studies/{quote(ref.study_uid)}/series/{quote(ref.series_uid)}"
                f"/instances/{quote(ref.sop_instance_uid)}")

    def retrieve_url(self, url: str, expect_sop_uid: str | None = None) -> list[Path]:
        """WADO-RS ``url``, each part in a temporary file that the caller owns."""
        accept = ACCEPT_AS_STORED if self._as_stored else ACCEPT_DEFAULT
        with self.http.stream("GET", url, headers={"Accept": accept, **AS_SENT}) as r:
            if r.status_code in (400, 406) and self._as_stored:
                r.read()
                log.warning("%s refuses transfer-syntax=*; retrieving in the server's chosen transfer syntax",
                            self.base_url)
                self._as_stored = False
                return self.retrieve_url(url, expect_sop_uid)
            if r.status_code >= 400:
                r.read()
                r.raise_for_status()
            if coding := content_coding(r.headers):  # decoding would not be bounded in memory
                raise RetrieveError(f"WADO-RS answered with Content-Encoding {coding}, though none was accepted")
            ctype = r.headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/related"):
                raise RetrieveError(f"WADO-RS answered {ctype or 'no content type'}, not multipart/related")
            try:
                parts = spool_parts(r.iter_bytes(1024 * 1024), boundary_of(ctype), tmp_dir=self.tmp_dir,
                                    prefix="wado-")
            except MalformedMultipart as exc:
                raise RetrieveError(f"WADO-RS response: {exc}") from None
            try:
                return [_check_part(part, expect_sop_uid if len(parts) == 1 else None) for part in parts]
            except BaseException:
                discard(parts)
                raise

    def retrieve_instance(self, ref: InstanceRef) -> Path:
        paths = self.retrieve_url(self.instance_url(ref), ref.sop_instance_uid)
        if len(paths) != 1:
            for p in paths:
                p.unlink(missing_ok=True)
            raise RetrieveError(f"WADO-RS instance answered {len(paths)} parts")
        return paths[0]


def _check_part(part: Part, expect_sop_uid: str | None) -> Path:
    """The part's file, once it is the complete Part 10 file asked for. (A part's
    Content-Length, when it has one, was checked as it was read.)"""
    path = part.path
    if part.content_type not in (None, DICOM):
        raise RetrieveError(f"multipart part is {part.content_type}, not {DICOM}")
    try:
        check_complete(path)
        meta = read_file_meta_info(path)
    except Unprocessable as exc:
        raise RetrieveError(f"retrieved instance is not a complete DICOM file: {exc}") from None
    except Exception as exc:
        raise RetrieveError(f"retrieved part is not a DICOM Part 10 file: {exc}") from None
    sop = str(meta.get("MediaStorageSOPInstanceUID", ""))
    if expect_sop_uid and sop != expect_sop_uid:
        raise RetrieveError(f"asked for {expect_sop_uid}, received {sop}")
    return path


def part_metadata(path: Path) -> tuple[str, str]:
    meta = read_file_meta_info(path)
    return str(meta.get("MediaStorageSOPInstanceUID", "")), str(meta.get("MediaStorageSOPClassUID", ""))


# --- the poller backend -----------------------------------------------------------------


class DicomWebBackend:
    """QIDO/WADO for the poll loop in :mod:`shared.inputs.pollers` (DICOMweb and Healthcare)."""

    def __init__(self, client: DicomWebClient, *, source_id: str, source_type: str, query: dict[str, str],
                 page_size: int, ingestor: Ingestor, now: datetime):
        self.client = client
        self.source_id = source_id
        self.source_type = source_type
        self.query = query
        self.page_size = page_size
        self.ingestor = ingestor
        self.now = now

    @classmethod
    def for_source(cls, source, *, ingestor: Ingestor, secrets, now: datetime, tmp_dir: Path | None = None,
                   base_url: str | None = None, auth: httpx.Auth | None = None,
                   headers: dict[str, str] | None = None) -> "DicomWebBackend":
        if auth is None and headers is None:
            auth, headers = httpx_auth(source.auth, secrets)
        client = DicomWebClient(base_url or source.url, auth=auth, headers=headers, timeout_s=source.timeout_s,
                                tmp_dir=tmp_dir)
        return cls(client, source_id=source.id, source_type=source.type, query=dict(source.query),
                   page_size=source.page_size, ingestor=ingestor, now=now)

    def close(self) -> None:
        self.client.close()

    def find_studies(self, since: str | None, study_uid: str | None = None) -> Iterator[StudyHit]:
        params = [(k, v) for k, v in self.query.items()]
        if since:
            params.append(("StudyDate", f"{since}-"))
        if study_uid:
            params.append(("StudyInstanceUID", study_uid))
        params += [("includefield", name) for name in STUDY_INCLUDE]
        for item in self.client.qido("/studies", params, page_size=self.page_size):
            uid = json_value(item, "0020000D")
            if not uid:
                continue
            yield StudyHit(study_uid=str(uid), study_date=str(json_value(item, "00080020") or "")[:8],
                           count=_int(json_value(item, "00201208")))

    def find_study(self, study_uid: str) -> StudyHit | None:
        return next((h for h in self.find_studies(None, study_uid) if h.study_uid == study_uid), None)

    def list_instances(self, hit: StudyHit) -> list[InstanceRef]:
        params = [("includefield", name) for name in INSTANCE_INCLUDE]
        refs, uids = [], set()
        for item in self.client.qido(f"/studies/{quote(hit.study_uid)}/instances", params,
                                     page_size=max(self.page_size, 1000)):
            sop, series = json_value(item, "00080018"), json_value(item, "0020000E")
            if not sop or not series or sop in uids:
                continue
            uids.add(sop)
            refs.append(InstanceRef(hit.study_uid, str(series), str(sop), str(json_value(item, "00080016") or "")))
        return refs

    def retrieve(self, hit: StudyHit, refs: list[InstanceRef], *, whole_study: bool, done: Done,
                 failed: Failed) -> None:
        consecutive = 0
        for ref in refs:
            try:
                path = self.client.retrieve_instance(ref)
                try:
                    self.ingest(path, ref.sop_instance_uid, ref.sop_class_uid)
                finally:
                    path.unlink(missing_ok=True)  # moved by the Ingestor when it could
            except Exception as exc:
                consecutive += 1
                failed(ref, f"{exc.__class__.__name__}: {exc}"[:300])
                if consecutive >= MAX_CONSECUTIVE_FAILURES:
                    raise RetrieveError(f"{consecutive} retrievals failed in a row; last: {exc}") from exc
                continue
            consecutive = 0
            done(ref)

    def ingest(self, path: Path, sop_uid: str, sop_class: str) -> None:
        if not sop_class:
            _, sop_class = part_metadata(path)
        meta = IngestMetadata(source_type=self.source_type, source_id=self.source_id,
                              received_at=datetime.now(timezone.utc),
                              sop_instance_uid=sop_uid, sop_class_uid=sop_class)
        self.ingestor.ingest_file(path, meta, move=True)
