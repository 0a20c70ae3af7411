"""Google Cloud Healthcare API DICOM stores as inputs.

* Poller (``HealthcareSource``): the DICOMweb poller (:mod:`shared.sources.dicomweb`)
  against the store's DICOMweb base
  ``{endpoint}/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb``, with bearer
  tokens from Application Default Credentials (``shared.httpauth.GoogleAuth``). Full
  instances are retrieved (WADO-RS instance resource, ``transfer-syntax=*``), never
  metadata only.
* Notifications: a store's ``notificationConfig`` / ``notificationConfigs[]`` publishes
  one Pub/Sub message per stored instance: data = the instance resource name
  ``projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb/studies/X/series/Y/instances/Z``;
  with ``notificationConfigs[]`` the attributes add ``action`` (StoreInstances,
  ImportDicomData, ...), ``storeName``, ``studyInstanceUID``, ``seriesInstanceUID``,
  ``sopInstanceUID``, ``versionId``, ``lastUpdatedTime``, ``modality``... The resource
  name is already the WADO-RS path of the instance below the endpoint, so the URL is
  ``{endpoint}/{resource name}``. :func:`handle_healthcare_notification` retrieves it
  and ingests it with source type ``healthcare``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import httpx

from shared.config import HttpAuth
from shared.httpauth import httpx_auth
from shared.ingest import Ingestor
from shared.messages import IngestMetadata
from shared.ports import DocumentStore
from shared.secrets import Secrets
from shared.sources import InstanceRef
from shared.sources.dicomweb import DicomWebBackend, DicomWebClient, RetrieveError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://healthcare.googleapis.com/v1"
NOTIFIED = "healthcare_notifications"  # DocumentStore collection: instances already ingested

RESOURCE_NAME = re.compile(
    r"^(?P<store>projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+)"
    r"/dicomWeb/studies/(?P<study>[^/]+)/series/(?P<series>[^/]+)/instances/(?P<instance>[^/]+)$"
)
STORE_NAME = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/datasets/(?P<dataset>[^/]+)"
                        r"/dicomStores/(?P<dicom_store>[^/]+)$")
# Actions whose notification is not a new or changed instance to retrieve.
IGNORED_ACTIONS = frozenset({"SetBlobSettings", "SetBlobStorageSettings", "DeleteInstance", "DeleteSeries",
                             "DeleteStudy", "DeleteInstances", "Delete"})


def google_auth(secrets: Secrets | None = None) -> tuple[httpx.Auth | None, dict[str, str]]:
    """The ADC bearer-token auth shared by every Healthcare API request."""
    return httpx_auth(HttpAuth(type="google"), secrets or Secrets())


def healthcare_backend(source, *, ingestor: Ingestor, secrets: Secrets, now: datetime,
                       tmp_dir: Path | None = None) -> DicomWebBackend:
    auth, headers = google_auth(secrets)
    return DicomWebBackend.for_source(source, ingestor=ingestor, secrets=secrets, now=now, tmp_dir=tmp_dir,
                                      base_url=source.dicomweb_url, auth=auth, headers=headers)


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


def source_for_store(sources, store: str) -> str | None:
    """The id of the configured HealthcareSource for ``store`` (a store resource name),
    if any: notifications then carry the same source id as the poller would."""
    m = STORE_NAME.match(store)
    if not m:
        return None
    for s in sources:
        if (getattr(s, "type", None) == "healthcare" and s.project == m["project"] and s.location == m["location"]
                and s.dataset == m["dataset"] and s.dicom_store == m["dicom_store"]):
            return s.id
    return None


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
    ``docs``: when given, an instance already ingested from a notification (Pub/Sub
    redelivers) is acknowledged without ingesting it again; the marker is written after
    the ingest, so a crash in between means one duplicate, never a loss.
    Raises on retrieval/ingest failures, so Pub/Sub redelivers (and, after the
    subscription's attempts, dead-letters it into an exception record)."""
    attributes = dict(attributes or {})
    resource_name = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data)
    resource = parse_instance_resource(resource_name)
    action = attributes.get("action", "")
    if action in IGNORED_ACTIONS or action.startswith("Delete"):
        log.info("healthcare notification %s for %s: nothing to retrieve", action, resource.sop_instance_uid)
        return NotificationResult("ignored", resource.name, resource.sop_instance_uid)
    marker = hashlib.sha256(f"{resource.name}|{attributes.get('versionId', '')}".encode()).hexdigest()[:40]
    if docs is not None and docs.get(NOTIFIED, marker) is not None:
        log.info("healthcare notification for %s: already ingested", resource.sop_instance_uid)
        return NotificationResult("duplicate", resource.name, resource.sop_instance_uid)
    if auth is None and headers is None:
        auth, headers = google_auth(secrets)
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
        from shared.sources.dicomweb import part_metadata

        _, sop_class = part_metadata(path)
        meta = IngestMetadata(source_type="healthcare", source_id=source_id or resource.store,
                              received_at=datetime.now(timezone.utc),
                              sop_instance_uid=resource.sop_instance_uid, sop_class_uid=sop_class)
        ref = ingestor.ingest_file(path, meta, move=True)
    finally:
        path.unlink(missing_ok=True)
    if docs is not None:
        docs.set(NOTIFIED, marker, {"resource": resource.name, "version": attributes.get("versionId", ""),
                                    "blob": str(ref), "at": datetime.now(timezone.utc).isoformat()})
    log.info("healthcare notification: ingested %s as %s", resource.sop_instance_uid, ref)
    return NotificationResult("ingested", resource.name, resource.sop_instance_uid, str(ref))
