"""Google Cloud Healthcare API DICOM stores as a polled source (``HealthcareSource``):
the DICOMweb poller (:mod:`shared.inputs.pollers.dicomweb`) against the store's
DICOMweb base ``{endpoint}/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb``,
with bearer tokens from Application Default Credentials
(``shared.httpauth.GoogleAuth``). Full instances are retrieved (WADO-RS instance
resource, ``transfer-syntax=*``), never metadata only. The store's own change signal,
its Pub/Sub notifications, is :mod:`shared.inputs.healthcare_notify`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx

from shared.config import HttpAuth
from shared.httpauth import httpx_auth
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers.dicomweb import DicomWebBackend
from shared.ports import Secrets


def google_auth() -> tuple[httpx.Auth | None, dict[str, str]]:
    """The ADC bearer-token auth shared by every Healthcare API request (it reads no secret)."""
    return httpx_auth(HttpAuth(type="google"), secrets=None)


def healthcare_backend(source, *, ingestor: Ingestor, secrets: Secrets, now: datetime,
                       tmp_dir: Path | None = None) -> DicomWebBackend:
    auth, headers = google_auth()
    return DicomWebBackend.for_source(source, ingestor=ingestor, secrets=secrets, now=now, tmp_dir=tmp_dir,
                                      base_url=source.dicomweb_url, auth=auth, headers=headers)
