"""The GCP runtime: the stages' ports built from the environment, once per process
(a Cloud Functions instance, or a functions-framework process on the emulators).

Environment
-----------
GOOGLE_CLOUD_PROJECT        project of the topics, Firestore database and buckets (required)
AXIOM_TOPIC_PREFIX          prefix of every Pub/Sub topic name (default ``axiom-``): the stage
                            topic "planned" is ``projects/$GOOGLE_CLOUD_PROJECT/topics/${prefix}planned``.
                            Topics: ``${prefix}ingest`` (the ingest bucket's OBJECT_FINALIZE
                            notifications), ``${prefix}planned``, ``${prefix}deliver``,
                            ``${prefix}dead-letter`` (dead-letter topic of the three stage
                            subscriptions).
AXIOM_FIRESTORE_DATABASE    Firestore database id (default ``(default)``)
AXIOM_COLLECTION_PREFIX     prefix of every Firestore collection name (default empty)
AXIOM_CONFIG_TTL_S          seconds a config read from Firestore is reused (default 5); the SCP
                            gateway checks the config's revision this often
AXIOM_BASE_DIR              where relative filesystem-destination paths start (default /tmp)
AXIOM_TMP_DIR               where objects are downloaded while a stage works on them
                            (default: the system temporary directory)
AXIOM_SPANNER_JOB           the Cloud Run job that runs async spanner queries
                            (projects/P/locations/L/jobs/J; the ``spanner`` and ``api``
                            functions); unset: their tasks run in threads of the process
FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST
                            honoured by the client libraries (emulators, fake-gcs-server)

Config lives in Firestore in the layout of :func:`shared.config.to_documents`;
:func:`load_config` writes a YAML file (or an AppConfig) there.

Cold start: this module is imported by the entry module (functions/main.py) and so
imports nothing heavy itself; the config models, pydicom, pynetdicom, the Google
clients and FastAPI are imported by the first call that builds the ports or the API
(docs/architecture.md, "Cold start").
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from shared import logs
from shared.logs import install as install_log_safety

if TYPE_CHECKING:
    from shared.config import AppConfig
    from shared.ports import Ports

DEFAULT_TOPIC_PREFIX = "axiom-"

_lock = threading.Lock()
_ports: Ports | None = None
_apis: dict = {}  # the API apps (FastAPI) over _ports by entry point: shared.api.app.create_api


def configure_logging(env: Mapping[str, str] | None = None) -> None:
    """The functions' logging: AXIOM_LOG_LEVEL (INFO), AXIOM_LOG_FORMAT (``json``, Cloud
    Logging's structured entries, unless ``text``)."""
    env = os.environ if env is None else env
    logs.configure(env.get("AXIOM_LOG_LEVEL", "INFO"), env.get("AXIOM_LOG_FORMAT") or "json")


def topic_prefix(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("AXIOM_TOPIC_PREFIX", DEFAULT_TOPIC_PREFIX)


def _project(env: Mapping[str, str]) -> str:
    project = env.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise RuntimeError("GOOGLE_CLOUD_PROJECT is not set")
    return project


def config_ttl_s(env: Mapping[str, str] | None = None) -> float:
    """Seconds a config read from Firestore is reused (the gateway: how often it checks
    the config's revision)."""
    env = os.environ if env is None else env
    return float(env.get("AXIOM_CONFIG_TTL_S", "5"))


def document_store(env: Mapping[str, str] | None = None):
    from shared.adapters.firestore import FirestoreDocumentStore, make_client

    env = os.environ if env is None else env
    client = make_client(_project(env), env.get("AXIOM_FIRESTORE_DATABASE") or "(default)")
    return FirestoreDocumentStore(client, prefix=env.get("AXIOM_COLLECTION_PREFIX", ""))


def build_ports(env: Mapping[str, str] | None = None) -> Ports:
    """New ports from ``env`` (default: the process environment). Clients are created
    here, never at import, so a forking server creates them in each worker."""
    from shared.adapters.firestore import FirestoreDeliveryLedger
    from shared.adapters.gcs import GCSBlobStore
    from shared.adapters.pubsub import PubSubBus
    from shared.adapters.secret_manager import SecretManagerSecrets
    from shared.destinations import Senders
    from shared.dicom import reactor
    from shared.ports import Ports
    from shared.runtime.configcache import CachedConfig

    install_log_safety()  # before a stage runs in this process: no tag values in its logs (shared/logs.py)
    reactor.install()  # before the first association: they wait for work, not for the clock
    env = os.environ if env is None else env
    project = _project(env)
    docs = document_store(env)
    secrets = SecretManagerSecrets()
    return Ports(
        blobs=GCSBlobStore(project=project, tmp_dir=env.get("AXIOM_TMP_DIR") or None),
        docs=docs,
        ledger=FirestoreDeliveryLedger(docs.client, prefix=docs.prefix),
        bus=PubSubBus(project, prefix=topic_prefix(env)),
        config=CachedConfig(docs, ttl_s=config_ttl_s(env)),
        senders=Senders(base_dir=Path(env.get("AXIOM_BASE_DIR") or "/tmp"), secrets=secrets),
        secrets=secrets,
    )


def ports() -> Ports:
    """The process's ports, built on first use and then reused across invocations."""
    global _ports
    if _ports is None:
        with _lock:
            if _ports is None:
                _ports = build_ports()
    return _ports


def api():
    """The config API (:func:`shared.api.app.create_api`) over :func:`ports`, built on
    first use and then reused; built again when the process's ports were replaced."""
    return _app("api")


def spanner_api():
    """The spanner's entry point: the API app with the spanner's routes only
    (:data:`shared.api.app.SPANNER_ROUTERS`), reused as :func:`api`."""
    return _app("spanner")


def spanner_jobs(env: Mapping[str, str] | None = None):
    """Where async spanner queries run: the Cloud Run job ``AXIOM_SPANNER_JOB``
    (:class:`shared.spanner.job.CloudRunJobs`), or None (threads of this process)."""
    env = os.environ if env is None else env
    job = env.get("AXIOM_SPANNER_JOB")
    if not job:
        return None
    from shared.spanner.job import CloudRunJobs

    return CloudRunJobs(job)


def _app(entry: str):
    from shared.api.app import ROUTERS, SPANNER_ROUTERS, create_api

    current = ports()
    app = _apis.get(entry)
    if app is None or app.state.ports is not current:
        with _lock:
            app = _apis.get(entry)
            if app is None or app.state.ports is not current:
                app = create_api(current, routers=SPANNER_ROUTERS if entry == "spanner" else ROUTERS)
                app.state.spanner_jobs = spanner_jobs()
                _apis[entry] = app
    return app


def load_config(config: AppConfig | str | Path, docs=None) -> AppConfig:
    """Validate ``config`` (an AppConfig or a YAML file) and replace the config
    collections in Firestore with it. Returns the validated config."""
    from shared.config import AppConfig, load_yaml
    from shared.config.store import replace_config

    if not isinstance(config, AppConfig):
        config = load_yaml(config)
    replace_config(docs or document_store(), config)
    return config
