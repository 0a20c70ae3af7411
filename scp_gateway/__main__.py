"""The GCP-mode gateway (the container's command, ``python -m scp_gateway``):
one C-STORE/C-ECHO listener that writes every received instance to the GCS ingest
bucket and answers Success only once the upload has returned. The bucket's
OBJECT_FINALIZE notification then starts ``match`` (see functions/main.py).

Environment
-----------
AXIOM_INGEST_BUCKET   the ingest bucket (required)
AXIOM_AE_TITLE        the listener's AE title (default AXIOM)
AXIOM_LISTEN_HOST     address to bind (default 0.0.0.0)
AXIOM_LISTEN_PORT     DICOM port (default 11112)
AXIOM_LISTENER_ID     recorded as the source id of what arrives (default ``main``)
AXIOM_MAX_PDU         maximum PDU size offered (default 131072)
AXIOM_CALLED_AE_TITLES, AXIOM_CALLING_AE_TITLES, AXIOM_ALLOWED_SOURCES
                      the listener's allow-lists, comma-separated (unset: no check; see
                      shared.config.Listener); rejections are logged, not counted
AXIOM_SPOOL_DIR       where datasets are received before upload (default: system tmp); data sets
                      left there by a previous run (never answered Success) are removed at start
AXIOM_MIN_FREE_BYTES  below this much free space in the spool dir, refuse associations and
                      C-STOREs (default: settings.min_free_bytes's, 1 GiB; 0: never)
AXIOM_LOG_LEVEL       logging level (default INFO); AXIOM_PYNETDICOM_LOG_LEVEL for pynetdicom (WARNING)
AXIOM_LOG_FORMAT      json (default: one Cloud Logging structured entry a line) or text
GOOGLE_CLOUD_PROJECT, STORAGE_EMULATOR_HOST   for the GCS client

Runs until SIGTERM (what Cloud Run / Kubernetes send) or SIGINT; associations in
progress are finished by pynetdicom's shutdown before the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading

from shared import logs
from shared.config import Listener, Settings
from shared.dicom import reactor
from shared.inputs.cstore.gateway import Gateway
from shared.inputs.cstore.receive import sweep_spool
from shared.inputs.ingest import Ingestor

log = logging.getLogger("scp_gateway")


def listener_from_env(env=os.environ) -> Listener:
    return Listener(
        id=env.get("AXIOM_LISTENER_ID", "main"),
        ae_title=env.get("AXIOM_AE_TITLE", "AXIOM"),
        host=env.get("AXIOM_LISTEN_HOST", "0.0.0.0"),
        port=int(env.get("AXIOM_LISTEN_PORT", "11112")),
        max_pdu=int(env.get("AXIOM_MAX_PDU", "131072")),
        called_ae_titles=_env_list(env, "AXIOM_CALLED_AE_TITLES"),
        calling_ae_titles=_env_list(env, "AXIOM_CALLING_AE_TITLES"),
        allowed_sources=_env_list(env, "AXIOM_ALLOWED_SOURCES"),
    )


def _env_list(env, name: str) -> list[str] | None:
    items = [item.strip() for item in env.get(name, "").split(",") if item.strip()]
    return items or None


def main() -> int:
    # JSON lines for Cloud Logging unless AXIOM_LOG_FORMAT says otherwise; no tag values in log lines
    logs.configure(os.environ.get("AXIOM_LOG_LEVEL", "INFO"), os.environ.get("AXIOM_LOG_FORMAT") or "json")
    reactor.install()  # before the first association: they wait for work, not for the clock
    bucket = os.environ.get("AXIOM_INGEST_BUCKET")
    if not bucket:
        log.error("AXIOM_INGEST_BUCKET is not set")
        return 2
    spool = os.environ.get("AXIOM_SPOOL_DIR")
    if spool:  # pynetdicom receives datasets into tempfile's directory
        os.makedirs(spool, exist_ok=True)
        tempfile.tempdir = spool
        swept = sweep_spool(spool)
        if swept:
            log.info("removed %d data set(s) a previous run received but never answered", swept)
    min_free_bytes = int(os.environ.get("AXIOM_MIN_FREE_BYTES", Settings().min_free_bytes))

    from shared.adapters.gcs import GCSBlobStore  # the GCP clients only in GCP mode
    from shared.adapters.secret_manager import SecretManagerSecrets

    listener = listener_from_env()
    gateway = Gateway([listener], Ingestor(GCSBlobStore(), bucket), secrets=SecretManagerSecrets(),
                      min_free_bytes=min_free_bytes)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    gateway.start()
    log.info("gateway ready: AE %s on %s:%d -> gs://%s", listener.ae_title, listener.host,
             gateway.ports[listener.id], bucket)
    stop.wait()
    log.info("stopping")
    gateway.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
