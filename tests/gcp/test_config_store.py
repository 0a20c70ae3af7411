"""The config store against the Firestore emulator: compare-and-set (all or nothing,
one winner of a race), and API writes through the real app, as over SQLite
(tests/unit/test_config_api.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from shared.api.app import PREFIX, create_api
from shared.api.auth import authenticate
from shared.api.permissions import Principal, Role
from shared.config import parse_config
from shared.config.store import REVISION, ConfigStore, replace_config
from shared.ports import Ports
from tests.support.gcp import unique
from tests.unit.test_config_api import CONFIG, SEEDS_RULESET


@pytest.fixture
def docs(firestore_emulator):
    from shared.adapters.firestore import FirestoreDocumentStore

    docs = FirestoreDocumentStore(prefix=unique("cfg"))
    replace_config(docs, parse_config(CONFIG))
    return docs


def test_compare_and_set_is_all_or_nothing(docs):
    assert docs.compare_and_set([("c", "a", None, {"v": 1}), ("c", "b", None, {"v": 1})])
    # b is not absent any more: neither is written
    assert not docs.compare_and_set([("c", "a", {"v": 1}, {"v": 2}), ("c", "b", None, {"v": 2})])
    assert docs.get("c", "a") == {"v": 1} and docs.get("c", "b") == {"v": 1}
    assert docs.compare_and_set([("c", "a", {"v": 1}, None), ("c", "b", {"v": 1}, {"v": 3})])
    assert docs.get("c", "a") is None and docs.get("c", "b") == {"v": 3}


def test_concurrent_writes_each_land_on_the_config_they_were_validated_against(docs):
    """Four writers add one destination each at once: every write retries until it
    lands on the latest revision, none is lost."""
    store = ConfigStore(docs)
    ids = [f"d{n}" for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: store.write("destinations", i, lambda _: {"id": i, "type": "filesystem",
                                                                           "path": i}), ids))
    assert set(ids) <= set(docs.list("destinations"))
    assert docs.get(*REVISION) is not None


def test_api_crud_over_firestore(docs, tmp_path):
    ports = Ports(blobs=None, docs=docs, ledger=None, bus=None, config=None, senders=None, secrets=None)
    api = create_api(ports)
    api.dependency_overrides[authenticate] = lambda: Principal("u1", "ed@example.org", Role.EDITOR, "api_key")
    client = TestClient(api)
    created = client.post(f"{PREFIX}/config/rulesets", json=SEEDS_RULESET)
    assert created.status_code == 201, created.text
    etag = created.headers["ETag"]
    patched = client.patch(f"{PREFIX}/config/rulesets/ct-chest-routing", json={"priority": 5},
                           headers={"If-Match": etag})
    assert patched.status_code == 200 and docs.get("rulesets", "ct-chest-routing")["priority"] == 5
    assert client.patch(f"{PREFIX}/config/rulesets/ct-chest-routing", json={"priority": 6},
                        headers={"If-Match": etag}).status_code == 412
    assert client.delete(f"{PREFIX}/config/destinations/primary-storage").status_code == 409
    assert client.delete(f"{PREFIX}/config/rulesets/ct-chest-routing").status_code == 204
    assert client.delete(f"{PREFIX}/config/destinations/primary-storage").status_code == 204
    assert ConfigStore(docs).config().rulesets[0].id == "site"
