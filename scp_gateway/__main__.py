"""The GCP-mode gateway (the container's command, ``python -m scp_gateway``): the
config's C-STORE/C-ECHO listeners (``listeners`` in Firestore, as the embedded runtime
reads them from its config: AE titles, ports, allow-lists, TLS), each writing every
received instance to the GCS ingest bucket and answering Success only once the upload
has returned. The bucket's OBJECT_FINALIZE notification then starts ``match`` (see
functions/main.py).

Listeners follow the config without a restart (``shared/inputs/cstore/follow.py``, the
loop the embedded runtime runs too): the config's revision is read every
``AXIOM_CONFIG_TTL_S`` seconds and, when it changed, a new listener opens, a removed one
closes and a changed one reopens. TLS certificates and keys are secret references
read through Secret Manager (``gsm:``; ``env:`` and ``file:`` too). Refused
associations and listeners that cannot listen are counted in Firestore's ``counters``
(``listener:<id>``), as in the embedded runtime. While Firestore cannot be read (at
start or later) the gateway logs it, keeps the listeners it has (none at start) and
tries again, backing off up to a minute; a config naming no listeners is logged as a
warning and followed until it names some. The health check is
``python -m scp_gateway.healthcheck``.

Environment
-----------
AXIOM_INGEST_BUCKET   the ingest bucket (required)
GOOGLE_CLOUD_PROJECT  project of the Firestore database holding the config (required)
AXIOM_FIRESTORE_DATABASE, AXIOM_COLLECTION_PREFIX
                      the config's database and collection prefix, as the functions'
                      (shared/runtime/gcp.py)
AXIOM_CONFIG_TTL_S    seconds between two looks at the config's revision (default 5)
AXIOM_SPOOL_DIR       where datasets are received before upload (default: system tmp); data sets
                      left there by a previous run (never answered Success) are removed at start;
                      the health check's ``listeners.json`` is kept there
AXIOM_MIN_FREE_BYTES  below this much free space in the spool dir, refuse associations and
                      C-STOREs (default: settings.min_free_bytes's, 1 GiB; 0: never)
AXIOM_LOG_LEVEL       logging level (default INFO); AXIOM_PYNETDICOM_LOG_LEVEL for pynetdicom (WARNING)
AXIOM_LOG_FORMAT      json (default: one Cloud Logging structured entry a line) or text
FIRESTORE_EMULATOR_HOST, STORAGE_EMULATOR_HOST   honoured by the client libraries

Runs until SIGTERM (what Cloud Run / Kubernetes send) or SIGINT; associations in
progress are finished by pynetdicom's shutdown before the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading

from scp_gateway.healthcheck import state_path, write_state
from shared import logs
from shared.config import Settings
from shared.dicom import reactor
from shared.inputs.cstore.follow import follow_listeners
from shared.inputs.cstore.gateway import Gateway
from shared.inputs.cstore.receive import sweep_spool
from shared.inputs.ingest import Ingestor
from shared.runtime import gcp
from shared.runtime.configcache import CachedConfig

log = logging.getLogger("scp_gateway")

# the config is read again when its revision changes (one document read per look) and
# at the latest this often, in case a write bypassed the revision
FULL_RELOAD_S = 300.0
# how often the listeners open are written for the health check
STATE_EVERY_S = 1.0


def open_listeners(gateway: Gateway) -> list[dict]:
    """The listeners ``gateway`` has open, in config order, as the health check reads them."""
    ports = gateway.ports
    return [{"id": lsn.id, "host": lsn.host, "port": ports[lsn.id], "tls": lsn.tls is not None,
             "called_ae": (lsn.called_ae_titles or [lsn.ae_title])[0],
             "calling_ae": (lsn.calling_ae_titles or [None])[0]}
            for lsn in list(gateway.listeners) if ports.get(lsn.id) is not None]


def main() -> int:
    # JSON lines for Cloud Logging unless AXIOM_LOG_FORMAT says otherwise; no tag values in log lines
    logs.configure(os.environ.get("AXIOM_LOG_LEVEL", "INFO"), os.environ.get("AXIOM_LOG_FORMAT") or "json")
    reactor.install()  # before the first association: they wait for work, not for the clock
    bucket = os.environ.get("AXIOM_INGEST_BUCKET")
    if not bucket:
        log.error("AXIOM_INGEST_BUCKET is not set")
        return 2
    if not os.environ.get("GOOGLE_CLOUD_PROJECT"):
        log.error("GOOGLE_CLOUD_PROJECT is not set: it names the Firestore database holding the listeners")
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

    docs = gcp.document_store()
    config = CachedConfig(docs, ttl_s=FULL_RELOAD_S, watch_revision=True)

    def sources() -> list:
        # C-MOVE attribution (gateway.handle_store); the cached config, read by the follower
        try:
            return config().sources
        except Exception:  # noqa: BLE001 - an unreadable config must not fail a C-STORE: label it as the listener's
            return []

    def spanners() -> list:  # the listeners with `spanner` answer C-FIND from these
        try:
            return config().spanners
        except Exception:  # noqa: BLE001 - an unreadable config: the C-FIND answers it cannot process
            return []

    gateway = Gateway([], Ingestor(GCSBlobStore(), bucket), secrets=SecretManagerSecrets(), sources=sources,
                      spanners=spanners, min_free_bytes=min_free_bytes, docs=docs)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    follower = threading.Thread(target=follow_listeners, args=(gateway, config, stop, gcp.config_ttl_s()),
                                kwargs={"no_listeners_level": logging.WARNING}, name="follow-listeners", daemon=True)
    follower.start()
    log.info("gateway started: listeners from the config in Firestore -> gs://%s", bucket)
    state, written = state_path(), None
    while not stop.wait(STATE_EVERY_S):
        current = open_listeners(gateway)
        if current != written:
            try:
                write_state(state, current)
                written = current
            except OSError as exc:
                log.warning("cannot write %s for the health check (%s)", state, logs.describe_error(exc))
    log.info("stopping")
    follower.join(10)
    gateway.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
