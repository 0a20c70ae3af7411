"""The ``crosswalk_sync`` entry point, called as Cloud Scheduler's Pub/Sub push calls it
(a real-shaped CloudEvent through functions-framework's test client), over the GCP
ports on the Firestore emulator: a synced map's rows are copied from PostgreSQL into
Firestore, and then answer lookups with the database stopped."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from functions_framework import create_app

from shared.adapters.crosswalk_databases import DatabaseCrosswalk
from shared.adapters.firestore import FirestoreDocumentStore
from shared.adapters.secrets import LocalSecrets
from shared.config import parse_config
from shared.crosswalk_sync import SYNCS
from shared.runtime import gcp as gcp_runtime
from tests.support.databases import load_table, postgres_server  # noqa: F401 (fixture)
from tests.support.gcp import unique

MAIN = str(Path(__file__).parents[2] / "functions" / "main.py")
ROWS = [("HOSP-A", "PAT-1", "R-0001"), ("HOSP-A", "PAT-2", "R-0002"), ("HOSP-B", "PAT-1", "R-1001")]


def _scheduler_tick(app) -> int:
    event = {"specversion": "1.0", "type": "google.cloud.pubsub.topic.v1.messagePublished",
             "source": "//pubsub.googleapis.com/projects/p/topics/crosswalk-sync", "id": unique("tick"),
             "datacontenttype": "application/json",
             "data": {"message": {"data": base64.b64encode(b"{}").decode(), "messageId": "1"},
                      "subscription": "projects/p/subscriptions/crosswalk-sync"}}
    return app.test_client().post("/", json=event, headers={"Content-Type": "application/cloudevents+json"}).status_code


@pytest.fixture
def database(postgres_server):  # noqa: F811
    db = postgres_server
    db.start()
    load_table(db, "synced_ids", ["issuer", "mrn", "research_id"], ROWS)
    yield db
    db.start()


def test_the_scheduled_function_copies_a_synced_map_into_firestore(firestore_emulator, fake_gcs, database,
                                                                   monkeypatch):
    prefix = unique("xs") + "-"
    monkeypatch.setenv("AXIOM_COLLECTION_PREFIX", prefix)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    monkeypatch.setenv("AXIOM_CONFIG_TTL_S", "0")
    monkeypatch.setenv("AXIOM_TEST_MPI_PASSWORD", database.password)
    config = parse_config({
        "crosswalk_sources": [{"id": "mpi", "type": "postgresql", "host": "127.0.0.1", "port": database.port,
                               "database": database.database, "user": database.user,
                               "password": "env:AXIOM_TEST_MPI_PASSWORD", "connect_timeout_s": 2}],
        "crosswalks": [{"id": "research", "source": "mpi", "table": "synced_ids", "keys": ["issuer", "mrn"],
                        "value": "research_id", "sync": {"every_s": 3600}}],
    })
    docs = FirestoreDocumentStore(prefix=prefix)
    gcp_runtime.load_config(config, docs)
    monkeypatch.setattr(gcp_runtime, "_ports", None)
    try:
        app = create_app(target="crosswalk_sync", source=MAIN, signature_type="cloudevent")
        assert _scheduler_tick(app) == 200
    finally:
        monkeypatch.setattr(gcp_runtime, "_ports", None)
    state = docs.get(SYNCS, "research")
    assert state["last"]["added"] == 3 and state["error"] is None, state

    database.stop()  # lookups now come from Firestore alone
    crosswalk = DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources, LocalSecrets(), docs=docs)
    try:
        assert crosswalk.lookup("research", ("HOSP-B", "PAT-1")) == "R-1001"
        assert crosswalk.lookup("research", ("HOSP-A", "PAT-2")) == "R-0002"
        assert crosswalk.lookup("research", ("HOSP-A", "PAT-404")) is None
    finally:
        crosswalk.close()
