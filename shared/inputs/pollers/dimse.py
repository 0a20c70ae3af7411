"""DIMSE poller: C-FIND (Study Root, PS3.4 C.4.1) to find studies, SERIES then IMAGE level
to list a study's instances, and retrieval by C-MOVE (C.4.2) to our own gateway AE or by
C-GET (C.4.3) on the poller's own association.

C-MOVE: the peer opens an association to ``move_destination`` (our gateway listener,
known to the peer as a modality) and sends the instances there; the gateway ingests
each and answers Success only once it is durable. An instance counts as retrieved when
the peer's final C-MOVE response reports its sub-operation complete: Success means all
of them; otherwise everything except the Failed SOP Instance UID List (0008,0058); a
failure without that list counts none, and the next run moves them again. The peer
sends in the transfer syntax it stored when our gateway accepts it (the gateway accepts
every transfer syntax), so pixel data arrives unchanged.

C-GET: this SCU proposes, for each SOP class to be retrieved (known from the IMAGE-level
C-FIND), one presentation context per transfer syntax, with SCP role selection, so the
peer can send each instance in the transfer syntax it has without transcoding; each
C-STORE sub-operation is ingested from the handler through the Ingestor and answered
Success only then. At most 128 presentation contexts fit one association, so SOP
classes are retrieved in groups.

A study whose instances are all missing is retrieved at STUDY level, a series whose
instances are all missing at SERIES level, single missing instances at IMAGE level
with the SOP Instance UIDs as a list (PS3.4 C.4.2.2.1: UID list matching).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from shared.dicom import reactor
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers.types import Done, Failed, InstanceRef, StudyHit
from shared.messages import IngestMetadata

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
PENDING = (0xFF00, 0xFF01)
MAX_CONTEXTS = 128
IMAGE_UID_BATCH = 100  # SOP Instance UIDs per IMAGE-level retrieve request


class DimseError(RuntimeError):
    pass


def _set_key(ds: Dataset, key: str, value: str) -> None:
    tag = tag_for_keyword(key)
    if tag is None:
        tag = Tag(int(key.strip("()").replace(",", ""), 16))
    ds.add_new(tag, dictionary_VR(tag), value)


def _status(status: Dataset | None) -> int:
    return int(getattr(status, "Status", -1)) if status is not None and "Status" in status else -1


class DimseBackend:
    def __init__(self, source, *, ingestor: Ingestor, secrets=None, now: datetime | None = None,
                 tmp_dir: Path | None = None):
        self.source = source
        self.ingestor = ingestor
        self.tmp_dir = tmp_dir
        self._tls = None
        if source.tls:
            from shared.dicom.tls import client_context  # only when configured

            self._tls = (client_context(source.tls, secrets), source.host)
        self._assoc = None
        self._last_listing: dict[str, list[InstanceRef]] = {}
        self._peer_ip = ""
        try:
            self._peer_ip = str(ipaddress.ip_address(source.host))
        except ValueError:
            pass

    # --- associations --------------------------------------------------------------

    def _ae(self) -> AE:
        ae = AE(ae_title=self.source.calling_ae)
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, attr, self.source.timeout_s)
        return ae

    def _associate(self, ae: AE, **kwargs):
        s = self.source
        assoc = ae.associate(s.host, s.port, ae_title=s.ae_title,
                             **({"tls_args": self._tls} if self._tls else {}), **kwargs)
        if not assoc.is_established:
            raise DimseError(f"association with {s.ae_title}@{s.host}:{s.port} was not established"
                             f" ({'rejected' if assoc.is_rejected else 'aborted' if assoc.is_aborted else 'failed'})")
        reactor.keep_responses(assoc)  # a response the reactor takes first goes back to us
        return assoc

    def _query_assoc(self):
        """One association for C-FIND and C-MOVE, reopened if the peer dropped it."""
        if self._assoc is None or not self._assoc.is_established:
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            self._assoc = self._associate(ae)
        return self._assoc

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    # --- C-FIND ----------------------------------------------------------------------

    def _find(self, query: Dataset) -> Iterator[Dataset]:
        assoc = self._query_assoc()
        final = None
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = _status(status)
            if code in PENDING:
                if identifier is not None:
                    yield identifier
                continue
            final = code
        if final != STATUS_SUCCESS:
            self.close()  # a failed or aborted exchange: start the next one on a new association
            raise DimseError(f"C-FIND {query.QueryRetrieveLevel} failed: status "
                             f"{'none (connection lost or timed out)' if final in (None, -1) else f'0x{final:04X}'}")

    def find_studies(self, since: str | None, study_uid: str | None = None) -> Iterator[StudyHit]:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid or ""
        q.StudyDate = f"{since}-" if since else ""
        q.StudyTime = ""
        q.NumberOfStudyRelatedInstances = ""
        for key, value in self.source.query.items():
            _set_key(q, key, value)
        for ident in list(self._find(q)):
            uid = str(ident.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            count = ident.get("NumberOfStudyRelatedInstances")
            try:
                count = int(count) if count not in (None, "") else None
            except (TypeError, ValueError):
                count = None
            yield StudyHit(uid, str(ident.get("StudyDate", "") or "")[:8], count)

    def find_study(self, study_uid: str) -> StudyHit | None:
        return next((h for h in self.find_studies(None, study_uid) if h.study_uid == study_uid), None)

    def list_instances(self, hit: StudyHit) -> list[InstanceRef]:
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = hit.study_uid
        q.SeriesInstanceUID = ""
        series = [str(i.SeriesInstanceUID) for i in self._find(q) if i.get("SeriesInstanceUID")]
        refs, seen = [], set()
        for series_uid in dict.fromkeys(series):
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = hit.study_uid
            q.SeriesInstanceUID = series_uid
            q.SOPInstanceUID = ""
            q.SOPClassUID = ""
            for ident in self._find(q):
                sop = str(ident.get("SOPInstanceUID", "") or "")
                if sop and sop not in seen:
                    seen.add(sop)
                    refs.append(InstanceRef(hit.study_uid, series_uid, sop, str(ident.get("SOPClassUID", "") or "")))
        self._last_listing = {hit.study_uid: refs}
        return refs

    # --- retrieval --------------------------------------------------------------------

    def _requests(self, hit: StudyHit, refs: list[InstanceRef], whole_study: bool, all_refs_by_series=None):
        """(identifier, refs it covers): STUDY level for a whole study, else SERIES level
        for whole series, else IMAGE level with UID lists."""
        if whole_study:
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = hit.study_uid
            yield q, refs
            return
        by_series: dict[str, list[InstanceRef]] = defaultdict(list)
        for r in refs:
            by_series[r.series_uid].append(r)
        for series_uid, missing in by_series.items():
            if all_refs_by_series is not None and len(missing) == all_refs_by_series.get(series_uid, -1):
                q = Dataset()
                q.QueryRetrieveLevel = "SERIES"
                q.StudyInstanceUID = hit.study_uid
                q.SeriesInstanceUID = series_uid
                yield q, missing
                continue
            for i in range(0, len(missing), IMAGE_UID_BATCH):
                batch = missing[i:i + IMAGE_UID_BATCH]
                q = Dataset()
                q.QueryRetrieveLevel = "IMAGE"
                q.StudyInstanceUID = hit.study_uid
                q.SeriesInstanceUID = series_uid
                q.SOPInstanceUID = [r.sop_instance_uid for r in batch] if len(batch) > 1 else batch[0].sop_instance_uid
                yield q, batch

    def retrieve(self, hit: StudyHit, refs: list[InstanceRef], *, whole_study: bool, done: Done,
                 failed: Failed) -> None:
        if self.source.retrieve == "get":
            self._retrieve_get(hit, refs, whole_study, done, failed)
        else:
            self._retrieve_move(hit, refs, whole_study, done, failed)

    def _series_totals(self, hit: StudyHit) -> dict[str, int]:
        # how many instances each series has, to decide SERIES vs IMAGE level
        totals: dict[str, int] = defaultdict(int)
        for r in self._last_listing.get(hit.study_uid, []):
            totals[r.series_uid] += 1
        return totals

    def _retrieve_move(self, hit, refs, whole_study, done: Done, failed: Failed) -> None:
        dest = self.source.move_destination
        if not dest:
            raise DimseError("retrieve: move needs move_destination (our gateway's AE title, known to the peer)")
        for query, covered in self._requests(hit, refs, whole_study, self._series_totals(hit)):
            assoc = self._query_assoc()
            final, last = None, None
            for status, identifier in assoc.send_c_move(query, dest, StudyRootQueryRetrieveInformationModelMove):
                code = _status(status)
                if code in PENDING:
                    continue
                final, last = code, (status, identifier)
            if final in (None, -1):
                self.close()
                raise DimseError("C-MOVE: no final response (connection lost or timed out)")
            status, identifier = last
            completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
            warned = int(status.get("NumberOfWarningSuboperations", 0) or 0)
            nfailed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            if final == STATUS_SUCCESS:
                for r in covered:
                    done(r)
                continue
            failed_uids = None
            if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
                value = identifier.FailedSOPInstanceUIDList
                failed_uids = {str(v) for v in (value if isinstance(value, MultiValue) else [value]) if v}
            reason = f"C-MOVE status 0x{final:04X} ({completed} completed, {warned} warning, {nfailed} failed)"
            if failed_uids is not None and completed + warned > 0:
                for r in covered:
                    if r.sop_instance_uid in failed_uids:
                        failed(r, reason)
                    else:
                        done(r)
            elif completed + warned == len(covered) and nfailed == 0:
                for r in covered:
                    done(r)
            else:
                for r in covered:
                    failed(r, reason)

    def _retrieve_get(self, hit, refs, whole_study, done: Done, failed: Failed) -> None:
        wanted = {r.sop_instance_uid: r for r in refs}
        classes = sorted({r.sop_class_uid for r in refs if r.sop_class_uid})
        if not classes or len(classes) != len({r.sop_class_uid for r in refs}):
            raise DimseError("C-GET needs the SOP Class UID of every instance from the IMAGE-level C-FIND")
        per_assoc = max(1, (MAX_CONTEXTS - 1) // len(ALL_TRANSFER_SYNTAXES))
        groups = [classes[i:i + per_assoc] for i in range(0, len(classes), per_assoc)]
        totals = self._series_totals(hit)
        for group in groups:
            group_refs = [r for r in refs if r.sop_class_uid in group]
            # STUDY/SERIES level only when this association can take every class involved
            whole = whole_study and len(groups) == 1
            series_totals = totals if len(groups) == 1 else None
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for sop_class in group:
                for ts in ALL_TRANSFER_SYNTAXES:
                    ae.add_requested_context(sop_class, [ts])
            roles = [build_role(c, scp_role=True) for c in group]
            received: set[str] = set()
            handler = (evt.EVT_C_STORE, self._handle_get_store, [wanted, received, done])
            assoc = self._associate(ae, ext_neg=roles, evt_handlers=[handler])
            try:
                for query, covered in self._requests(hit, group_refs, whole, series_totals):
                    final = None
                    for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                        code = _status(status)
                        if code not in PENDING:
                            final = code
                    if final in (None, -1):
                        raise DimseError("C-GET: no final response (connection lost or timed out)")
                    for r in covered:
                        if r.sop_instance_uid not in received:
                            failed(r, f"not received by C-GET (final status 0x{final:04X})")
            finally:
                if assoc.is_established:
                    assoc.release()

    def _handle_get_store(self, event, wanted: dict[str, InstanceRef], received: set[str], done: Done) -> int:
        req = event.request
        sop = str(req.AffectedSOPInstanceUID or "")
        meta = IngestMetadata(source_type="dimse_poller", source_id=self.source.id,
                              calling_ae=self.source.ae_title, called_ae=self.source.calling_ae,
                              peer_ip=self._peer_ip, received_at=datetime.now(timezone.utc),
                              sop_instance_uid=sop, sop_class_uid=str(req.AffectedSOPClassUID or ""))
        path, owned = None, False
        try:
            try:
                path = event.dataset_path  # STORE_RECV_CHUNKED_DATASET (set by the gateway)
            except AttributeError:
                fd, name = tempfile.mkstemp(suffix=".dcm", prefix="cget-", dir=self.tmp_dir)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(event.encoded_dataset(include_meta=True))
                path, owned = Path(name), True
            self.ingestor.ingest_file(path, meta, move=True)
        except Exception:
            log.exception("C-GET: could not store %s from %s; answering 0xA700", sop, self.source.ae_title)
            return STATUS_OUT_OF_RESOURCES
        finally:
            if owned and path is not None:
                path.unlink(missing_ok=True)
        received.add(sop)
        if sop in wanted:
            done(wanted[sop])
        return STATUS_SUCCESS
