"""Google Cloud Healthcare API DICOM store notifications as an input (the store polled
as a source is :mod:`shared.inputs.pollers.healthcare`).

A store's ``notificationConfig`` / ``notificationConfigs[]`` publishes one Pub/Sub
message per stored instance: data = the instance resource name
``projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb/studies/X/series/Y/instances/Z``;
with ``notificationConfigs[]`` the attributes add ``action`` (StoreInstances,
ImportDicomData, ...), ``storeName``, ``studyInstanceUID``, ``seriesInstanceUID``,
``sopInstanceUID``, ``versionId``, ``lastUpdatedTime``, ``modality``... The resource
name is already the WADO-RS path of the instance below the endpoint, so the URL is
``{endpoint}/{resource name}``. :func:`handle_healthcare_notification` retrieves it
and ingests it with source type ``healthcare``.

Notifications are ingested once: Pub/Sub delivers at least once, and may deliver the
same message twice at the same moment (a redelivery after an ack deadline, two
subscriptions). Each notification (resource name + ``versionId``) is claimed before
anything is retrieved, by creating its marker document in ``healthcare_notifications``
(create-if-absent, atomic in SQLite and Firestore): ``{"state": "ingesting", "owner",
"until"}``, set to ``"ingested"`` once the instance is durable. A second delivery finds
the marker: ``ingested`` -> acknowledged as a duplicate; ``ingesting`` -> it raises
:class:`NotificationBusy`, so Pub/Sub redelivers it later, when it finds the marker
ingested (or released). A failed ingest deletes its claim before raising, so the
redelivery ingests it; a claim whose holder died (its ``until`` passed, CLAIM_S after
the claim) is taken over.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import httpx

from shared.inputs.attribution import source_for_store
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers.dicomweb import DicomWebClient, RetrieveError, part_metadata
from shared.inputs.pollers.healthcare import google_auth
from shared.inputs.pollers.types import InstanceRef
from shared.messages import IngestMetadata
from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://healthcare.googleapis.com/v1"
NOTIFIED = "healthcare_notifications"  # DocumentStore collection: one claim per notification
CLAIM_S = 900.0  # a claim's lease: longer than a Cloud Function may run (540 s)

RESOURCE_NAME = re.compile(
    r"^(?P<store>projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+)"
    r"/dicomWeb/studies/(?P<study>[^/]+)/series/(?P<series>[^/]+)/instances/(?P<instance>[^/]+)$"
)
# Actions whose notification is not a new or changed instance to retrieve.
IGNORED_ACTIONS = frozenset({"SetBlobSettings", "SetBlobStorageSettings", "DeleteInstance", "DeleteSeries",
                             "DeleteStudy", "DeleteInstances", "Delete"})


@dataclass(frozen=True)
class InstanceResource:
    store: str  # projects/P/locations/L/datasets/D/dicomStores/S
    study_uid: str
    series_uid: str
    sop_instance_uid: str

    @property
    def name(self) -> str:
        return (f"{self.store}/dicomWeb/studies/{self.study_uid}/series/{self.series_uid}"
                f"/instances/{self.sop_instance_uid}")

    def ref(self) -> InstanceRef:
        return InstanceRef(self.study_uid, self.series_uid, self.sop_instance_uid)

    def dicomweb_base(self, endpoint: str = DEFAULT_ENDPOINT) -> str:
        return f"{endpoint.rstrip('/')}/{self.store}/dicomWeb"


def parse_instance_resource(name: str) -> InstanceResource:
    m = RESOURCE_NAME.match(name.strip().strip("/"))
    if not m:
        raise ValueError(f"not a DICOM instance resource name: {name[:300]!r}")
    return InstanceResource(m["store"], m["study"], m["series"], m["instance"])


def notification_marker(resource_name: str, version: str) -> str:
    """The id of a notification's claim document: one per instance version."""
    return hashlib.sha256(f"{resource_name}|{version}".encode()).hexdigest()[:40]


class NotificationBusy(RuntimeError):
    """Another delivery of the same notification is ingesting it right now; raised so
    that Pub/Sub delivers this one again later (it is then a duplicate)."""


class NotificationClaim:
    """The claim on one notification's marker document (see the module docstring)."""

    def __init__(self, docs: DocumentStore, marker: str, info: dict):
        self.docs = docs
        self.marker = marker
        self.info = info
        self.owner = uuid.uuid4().hex

    def take(self) -> str:
        """"claimed" (this delivery ingests), "ingested" (a duplicate) or "busy"."""
        if self._create():
            return "claimed"
        held = self.docs.get(NOTIFIED, self.marker)
        if held is None:  # released in between by a delivery that failed
            return "claimed" if self._create() else "busy"
        if held.get("state", "ingested") == "ingested":  # markers without a state predate claims
            return "ingested"
        if float(held.get("until", 0)) > time.time():
            return "busy"
        log.warning("healthcare notification %s: the claim of a delivery that died expired; taking it over",
                    self.marker)
        self.docs.delete(NOTIFIED, self.marker)
        return "claimed" if self._create() else "busy"

    def _create(self) -> bool:
        return self.docs.create(NOTIFIED, self.marker, {**self.info, "state": "ingesting", "owner": self.owner,
                                                        "until": time.time() + CLAIM_S})

    def complete(self, blob: str) -> None:
        self.docs.set(NOTIFIED, self.marker, {**self.info, "state": "ingested", "blob": blob,
                                              "at": datetime.now(timezone.utc).isoformat()})

    def release(self) -> None:
        held = self.docs.get(NOTIFIED, self.marker)
        if held and held.get("owner") == self.owner and held.get("state") == "ingesting":
            self.docs.delete(NOTIFIED, self.marker)


@dataclass
class NotificationResult:
    status: str  # "ingested" | "duplicate" | "ignored"
    resource: str
    sop_instance_uid: str = ""
    blob: str | None = None


def handle_healthcare_notification(data: bytes | str, attributes: Mapping[str, str] | None, *, ingestor: Ingestor,
                                   dicomweb_base: str | None = None, endpoint: str = DEFAULT_ENDPOINT,
                                   auth: httpx.Auth | None = None, headers: dict[str, str] | None = None,
                                   secrets: Secrets | None = None, docs: DocumentStore | None = None,
                                   source_id: str | None = None, timeout_s: float = 60.0,
                                   tmp_dir: Path | None = None) -> NotificationResult:
    """Retrieve the instance a DICOM store notification names and ingest it.

    ``dicomweb_base``: the store's DICOMweb base URL; by default built from the resource
    name and ``endpoint``. ``auth``/``headers``: by default Google ADC bearer tokens.
    ``docs``: when given, the notification is claimed first (see the module docstring):
    one delivered again after its ingest is acknowledged as a duplicate, one delivered
    while another delivery ingests it raises NotificationBusy. A crash after the ingest
    and before the claim is completed means one duplicate once the claim expires, never
    a loss. Raises on retrieval/ingest failures, after releasing the claim, so Pub/Sub
    redelivers (and, after the subscription's attempts, dead-letters it into an
    exception record)."""
    attributes = dict(attributes or {})
    resource_name = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data)
    resource = parse_instance_resource(resource_name)
    action = attributes.get("action", "")
    if action in IGNORED_ACTIONS or action.startswith("Delete"):
        log.info("healthcare notification %s for %s: nothing to retrieve", action, resource.sop_instance_uid)
        return NotificationResult("ignored", resource.name, resource.sop_instance_uid)
    marker = notification_marker(resource.name, attributes.get("versionId", ""))
    claim = None
    if docs is not None:
        claim = NotificationClaim(docs, marker, {"resource": resource.name, "version": attributes.get("versionId", "")})
        taken = claim.take()
        if taken == "ingested":
            log.info("healthcare notification for %s: already ingested", resource.sop_instance_uid)
            return NotificationResult("duplicate", resource.name, resource.sop_instance_uid)
        if taken == "busy":
            log.info("healthcare notification for %s: another delivery is ingesting it; retry later",
                     resource.sop_instance_uid)
            raise NotificationBusy(f"instance {resource.sop_instance_uid} is being ingested by another delivery"
                                   " of the same notification")
    try:
        ref = _retrieve_and_ingest(resource, ingestor=ingestor, dicomweb_base=dicomweb_base, endpoint=endpoint,
                                   auth=auth, headers=headers, secrets=secrets, source_id=source_id,
                                   timeout_s=timeout_s, tmp_dir=tmp_dir)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    if claim is not None:
        claim.complete(str(ref))
    log.info("healthcare notification: ingested %s as %s", resource.sop_instance_uid, ref)
    return NotificationResult("ingested", resource.name, resource.sop_instance_uid, str(ref))


def _retrieve_and_ingest(resource: InstanceResource, *, ingestor: Ingestor, dicomweb_base: str | None, endpoint: str,
                         auth: httpx.Auth | None, headers: dict[str, str] | None, secrets: Secrets | None,
                         source_id: str | None, timeout_s: float, tmp_dir: Path | None):
    if auth is None and headers is None:
        auth, headers = google_auth()
    client = DicomWebClient(dicomweb_base or resource.dicomweb_base(endpoint), auth=auth, headers=headers,
                            timeout_s=timeout_s, tmp_dir=tmp_dir)
    try:
        try:
            path = client.retrieve_instance(resource.ref())
        except httpx.HTTPStatusError as exc:
            raise RetrieveError(f"WADO-RS {resource.sop_instance_uid}: HTTP {exc.response.status_code}") from None
    finally:
        client.close()
    try:
        _, sop_class = part_metadata(path)
        meta = IngestMetadata(source_type="healthcare", source_id=source_id or resource.store,
                              received_at=datetime.now(timezone.utc),
                              sop_instance_uid=resource.sop_instance_uid, sop_class_uid=sop_class)
        ref = ingestor.ingest_file(path, meta, move=True)
    finally:
        path.unlink(missing_ok=True)
    return ref


def ingest_healthcare_notification(ports, data: bytes, attributes: dict):
    """A Healthcare API DICOM store notification -> the instance, ingested once (the
    Pub/Sub-triggered function's body)."""
    config = ports.config()
    source_id = source_for_store(config.sources, attributes.get("storeName", ""))
    source = next((s for s in config.sources if s.id == source_id), None)
    return handle_healthcare_notification(
        data, attributes, ingestor=Ingestor(ports.blobs, config.settings.ingest_bucket), docs=ports.docs,
        secrets=ports.secrets, source_id=source_id,
        endpoint=getattr(source, "endpoint", None) or DEFAULT_ENDPOINT)
