"""Session fixtures for the GCP runtime tests: Google's Firestore and Pub/Sub
emulators and a fake-gcs-server, started once and always stopped. Every test in
this directory is marked ``gcp``."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.gcp import PROJECT, FakeGCS, FirestoreEmulator, PubSubAdmin, PubSubEmulator, stop_all


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gcp)


@pytest.fixture(scope="session")
def gcp_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gcp-logs")


@pytest.fixture(scope="session")
def emulators(gcp_logs):
    """(firestore, pubsub), started in parallel; the test process's environment
    points the client libraries at them for the whole session."""
    firestore, pubsub = FirestoreEmulator(gcp_logs), PubSubEmulator(gcp_logs)
    saved = {k: os.environ.get(k) for k in ("GOOGLE_CLOUD_PROJECT", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")}
    try:
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(firestore.start), pool.submit(pubsub.start)]:
                future.result()
        os.environ.update(GOOGLE_CLOUD_PROJECT=PROJECT, FIRESTORE_EMULATOR_HOST=firestore.host,
                          PUBSUB_EMULATOR_HOST=pubsub.host)
        yield firestore, pubsub
    finally:
        stop_all([firestore, pubsub])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def firestore_emulator(emulators) -> FirestoreEmulator:
    return emulators[0]


@pytest.fixture(scope="session")
def pubsub_emulator(emulators) -> PubSubEmulator:
    return emulators[1]


@pytest.fixture(scope="session")
def pubsub_admin(pubsub_emulator):
    admin = PubSubAdmin(pubsub_emulator)
    yield admin
    admin.close()


@pytest.fixture(scope="session")
def fake_gcs(gcp_logs, tmp_path_factory):
    """A fake-gcs-server without notifications, for the adapter tests."""
    gcs = FakeGCS(gcp_logs, tmp_path_factory.mktemp("gcs-root"))
    try:
        gcs.start()
        yield gcs
    finally:
        gcs.stop()
