"""DICOMweb STOW-RS destinations (PS3.18 section 10.5): a generic server, and a Google
Cloud Healthcare API DICOM store (the same protocol with Google credentials).

Instances may be batched: concurrent sends to one destination are gathered into one
multipart/related request of up to ``batch_max_instances`` / ``batch_max_bytes``, each
caller getting its own instance's outcome from the response's Referenced and Failed
SOP Sequences (PS3.18 10.5.3)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path

import httpx

from shared.config import DicomWebDestination, HealthcareDestination
from shared.dicomweb.multipart import (
    AS_SENT,
    MalformedMultipart,
    Part,
    boundary_of,
    content_coding,
    discard,
    new_boundary,
    parts_length,
    related_content_type,
    spool_parts,
    write_parts,
)
from shared.errors import DeliveryRefused, RetryLater
from shared.httpauth import GoogleAuth, httpx_auth
from shared.messages import Delivery
from shared.ports import Secrets

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024  # the peer's copy is read in chunks of this size
BATCH_WAIT_S = 0.05  # how long the first instance of a batch waits for company
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON = "00081155", "00081197"
# Failure reasons that mean "the peer already has this SOP Instance" (PS3.4 C.4.2.1.4,
# and 0x0111 Duplicate SOP Instance as servers report it in STOW-RS responses).
DUPLICATE_REASONS = {0x0111}
RETRYABLE_REASONS = {0xA700, 0x0110, 0x0212}  # out of resources, processing failure


def _sequence(body: dict, tag: str) -> list[dict]:
    return (body.get(tag) or {}).get("Value") or []


def _first(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


class DicomWebSender:
    def __init__(self, dest: DicomWebDestination | HealthcareDestination, secrets: Secrets):
        self.dest = dest
        if isinstance(dest, HealthcareDestination):
            self.url, auth, headers = dest.dicomweb_url, GoogleAuth(), {}
            # One instance per request. The API puts no size limit on a Store transaction
            # (its quotas page, "Resource limits": other DICOM methods take 10 MB), only a
            # time limit on the request: nothing is refused for its size before sending.
            self.max_items, self.max_bytes = 1, 50 * 1024 * 1024
        else:
            self.url = dest.url.rstrip("/")
            auth, headers = httpx_auth(dest.auth, secrets)
            self.max_items, self.max_bytes = dest.batch_max_instances, dest.batch_max_bytes
        self.client = httpx.Client(auth=auth, headers=headers, timeout=dest.timeout_s)
        self._lock = threading.Lock()
        self._pending: list[tuple[Path, Delivery, Future]] = []
        self._pending_bytes = 0
        self._timer: threading.Timer | None = None

    # --- batching -----------------------------------------------------------------

    def send(self, path: Path, delivery: Delivery) -> str:
        if self.max_items == 1:
            return self._post([(path, delivery)])[delivery.sop_instance_uid].result()
        future: Future = Future()
        size = path.stat().st_size
        with self._lock:
            self._pending.append((path, delivery, future))
            self._pending_bytes += size
            full = len(self._pending) >= self.max_items or self._pending_bytes >= self.max_bytes
            batch = self._take() if full else None
            if not full and self._timer is None:
                self._timer = threading.Timer(BATCH_WAIT_S, self._flush)
                self._timer.daemon = True
                self._timer.start()
        if batch:
            self._deliver(batch)
        return future.result()

    def _take(self):
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return batch

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            batch = self._take()
        if batch:
            self._deliver(batch)

    def _deliver(self, batch: list[tuple[Path, Delivery, Future]]) -> None:
        try:
            outcomes = self._post([(p, d) for p, d, _ in batch])
        except Exception as exc:  # the whole request failed: every caller sees it
            for _, _, fut in batch:
                fut.set_exception(exc)
            return
        for _, delivery, fut in batch:
            outcome = outcomes[delivery.sop_instance_uid]
            if outcome.exception():
                fut.set_exception(outcome.exception())
            else:
                fut.set_result(outcome.result())

    # --- one STOW-RS request --------------------------------------------------------

    def _post(self, items: list[tuple[Path, Delivery]]) -> dict[str, Future]:
        boundary = new_boundary()
        paths = [path for path, _ in items]
        try:
            response = self.client.post(
                f"{self.url}/studies",
                content=write_parts(paths, boundary),  # streamed from the files
                headers={"Content-Type": related_content_type(boundary), "Accept": "application/dicom+json",
                         "Content-Length": str(parts_length(paths, boundary))},
            )
        except httpx.HTTPError as exc:
            raise RetryLater(f"STOW-RS to {self.dest.id} failed: {type(exc).__name__}: {exc}") from exc
        outcomes = {d.sop_instance_uid: Future() for _, d in items}
        status = response.status_code
        if status >= 500 or status in (401, 403, 408, 429):
            raise RetryLater(f"STOW-RS to {self.dest.id} answered HTTP {status}")
        if status in (400, 413, 415):
            # the peer's own words may quote the instance's values: its log has them
            raise DeliveryRefused(f"STOW-RS to {self.dest.id} answered HTTP {status} {response.reason_phrase}")
        try:
            body = response.json() if response.content else {}
        except json.JSONDecodeError:
            body = {}
        failed = {}
        for item in _sequence(body, FAILED_SOP_SEQUENCE):
            failed[_first(item, REFERENCED_SOP_INSTANCE_UID)] = _first(item, FAILURE_REASON)
        for path, delivery in items:
            uid = delivery.sop_instance_uid
            if uid in failed or status == 409:
                reason = failed.get(uid)
                try:
                    outcomes[uid].set_result(self._failed(path, delivery, reason, status))
                except Exception as exc:
                    outcomes[uid].set_exception(exc)
            else:
                outcomes[uid].set_result(f"{self.dest.id} ({self.url})")
        return outcomes

    def _failed(self, path: Path, delivery: Delivery, reason: int | None, status: int) -> str:
        if reason in RETRYABLE_REASONS:
            raise RetryLater(f"{self.dest.id} failed the instance with reason 0x{reason:04X}")
        if reason in DUPLICATE_REASONS or (status == 409 and reason is None):
            if self._same_as_stored(path, delivery):
                return f"{self.dest.id} (already there)"
            raise DeliveryRefused(f"{self.dest.id} already has SOP Instance {delivery.sop_instance_uid} "
                                  "with different content")
        text = f"0x{reason:04X}" if isinstance(reason, int) else f"HTTP {status}"
        raise DeliveryRefused(f"{self.dest.id} refused the instance ({text})")

    def _same_as_stored(self, path: Path, delivery: Delivery) -> bool:
        """Fetch the peer's copy (WADO-RS, PS3.18 10.4, as stored) into temporary files
        as it streams in, and compare their content digests with the delivery's (file
        meta and our modification time aside). Memory stays at the read buffer whatever
        the instance's size; temporary disk is the size of the peer's copy."""
        from shared.dicom.io import content_digest

        study, series = _study_series_uids(path)
        # the Instance resource (PS3.18 10.4.1.1.3); there is no /studies/{s}/instances/{i}
        url = f"{self.url}/studies/{study}/series/{series}/instances/{delivery.sop_instance_uid}"
        try:
            parts = self._retrieve_to_files(url)
        except (httpx.HTTPError, MalformedMultipart, OSError) as exc:  # OSError: our temporary disk
            raise RetryLater(f"could not compare with {self.dest.id}'s copy: {exc}") from None
        try:
            return any(content_digest(part.path, ignore_last_modification_time=delivery.original_attributes_added)
                       == delivery.sha256 for part in parts)
        finally:
            discard(parts)

    def _retrieve_to_files(self, url: str) -> list[Part]:
        """The parts of a WADO-RS response, each in a temporary file (the process's
        temporary directory; the caller owns the files); a single-part response is one."""
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        with self.client.stream("GET", url, headers={"Accept": accept, **AS_SENT}) as response:
            if response.status_code != 200:
                raise httpx.HTTPError(f"HTTP {response.status_code}")
            if coding := content_coding(response.headers):  # decoding would not be bounded in memory
                raise httpx.HTTPError(f"answered with Content-Encoding {coding}, though none was accepted")
            chunks = response.iter_bytes(READ_CHUNK)
            ctype = response.headers.get("content-type", "")
            if ctype.lower().startswith("multipart/"):
                return spool_parts(chunks, boundary_of(ctype), prefix="peer-copy-")
            fd, name = tempfile.mkstemp(prefix="peer-copy-", suffix=".part")
            part = Part(path=Path(name))
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
            except BaseException:
                discard([part])
                raise
            return [part]

    def close(self) -> None:
        self.client.close()


def _study_series_uids(path: Path) -> tuple[str, str]:
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
