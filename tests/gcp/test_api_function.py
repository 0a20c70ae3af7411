"""The config API as the Cloud Function ``api`` (functions/api.py), served the way
functions-framework serves it (``create_app(target="api")``: its ASGI app) over the GCP
ports on the Firestore emulator and a fake-gcs-server: real CRUD with an admin key made
by ``axiom-flow users create-admin --gcp``, and the change reaching a GCP stage's
config cache after its TTL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from functions_framework import create_app

from shared import counters
from shared.adapters.firestore import FirestoreDocumentStore
from shared.api.app import PREFIX
from shared.cli import main
from shared.config import parse_config
from shared.runtime import gcp
from tests.support.gcp import PROJECT, unique
from tests.support.procs import wait_for
from tests.support.seeds import SEEDS_EXAMPLE

SOURCE = str(Path(__file__).parents[2] / "functions" / "api.py")
STAGE_TTL_S = 2.0
INGEST = "api-fn-ingest"


@pytest.fixture
def function(firestore_emulator, fake_gcs, monkeypatch, capsys):
    """(test client of the ``api`` function, headers with an admin key, the Firestore
    store the function uses, a GCP stage's ports over the same database)."""
    prefix = unique("apifn")
    monkeypatch.setenv("AXIOM_COLLECTION_PREFIX", prefix)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    monkeypatch.setenv("AXIOM_CONFIG_TTL_S", str(STAGE_TTL_S))
    monkeypatch.setattr(gcp, "_ports", None)
    monkeypatch.setattr(gcp, "_apis", {})
    fake_gcs.create_buckets(INGEST)
    docs = FirestoreDocumentStore(prefix=prefix)
    gcp.load_config(parse_config({
        "settings": {"ingest_bucket": INGEST, "processed_bucket": "api-fn-processed",
                     "quarantine_bucket": "api-fn-quarantine"},
        "destinations": [{"id": "primary-storage", "type": "filesystem", "path": "primary"}],
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["primary-storage"]}]}],
    }), docs)
    assert main(["users", "create-admin", "--gcp", "--project", PROJECT, "--email", "ops@example.org"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    app = create_app(target="api", source=SOURCE)
    with TestClient(app) as client:
        yield client, {"Authorization": f"Api-Key {key}"}, docs, gcp.build_ports()


def test_config_crud_through_the_function_reaches_the_stages(function):
    client, auth, docs, stage = function
    url = f"{PREFIX}/config"
    assert "dest-x" not in {d.id for d in stage.config().destinations}  # the stage's cache is warm

    refused = client.get(f"{url}/destinations")
    assert refused.status_code == 401 and "Api-Key" in refused.headers["WWW-Authenticate"]

    made = client.post(f"{url}/destinations", json={"id": "dest-x", "type": "filesystem", "path": "x"}, headers=auth)
    assert made.status_code == 201, made.text
    read = client.get(f"{url}/destinations/dest-x", headers=auth)
    assert read.status_code == 200 and read.json()["path"] == "x"
    first_etag = read.headers["ETag"]
    replaced = client.put(f"{url}/destinations/dest-x", json={**read.json(), "path": "y"},
                          headers={**auth, "If-Match": first_etag})
    assert replaced.status_code == 200, replaced.text
    stale = client.put(f"{url}/destinations/dest-x", json={**read.json(), "path": "z"},
                       headers={**auth, "If-Match": first_etag})
    assert stale.status_code == 412
    assert client.get(f"{url}/destinations/dest-x", headers=auth).json()["path"] == "y"

    ruleset = {"id": "to-x", "rules": [{"id": "ct", "when": {"tag": "Modality", "value": "CT"},
                                         "destinations": ["dest-x"]}]}
    assert client.post(f"{url}/rulesets", json=ruleset, headers=auth).status_code == 201
    read = client.get(f"{url}/rulesets/to-x", headers=auth)
    ruleset["rules"][0]["when"]["value"] = "MR"
    replaced = client.put(f"{url}/rulesets/to-x", json=ruleset, headers={**auth, "If-Match": read.headers["ETag"]})
    assert replaced.status_code == 200, replaced.text
    assert client.put(f"{url}/rulesets/to-x", json=ruleset,
                      headers={**auth, "If-Match": read.headers["ETag"]}).status_code == 412

    referenced = client.delete(f"{url}/destinations/dest-x", headers=auth)
    assert referenced.status_code == 409 and "to-x" in referenced.text

    seeds = client.post(f"{url}/rulesets", json=SEEDS_EXAMPLE, headers=auth)
    assert seeds.status_code == 201, seeds.text

    listed = client.get(f"{url}/rulesets", headers=auth)
    assert listed.status_code == 200 and {"main", "to-x", "ct-chest-routing"} <= set(listed.text.split('"'))
    assert "dest-x" in client.get(f"{url}/destinations", headers=auth).text

    # what the function writes is in Firestore; a stage keeps its cached config for its
    # TTL, then sees the change
    wait_for(lambda: any(d.id == "dest-x" for d in stage.config().destinations), STAGE_TTL_S * 5,
             what="the stage to see dest-x")
    loaded_at = stage.config._loaded_at  # when the stage's cache last read Firestore
    current = client.get(f"{url}/destinations/dest-x", headers=auth)
    moved = client.patch(f"{url}/destinations/dest-x", json={"path": "w"},
                         headers={**auth, "If-Match": current.headers["ETag"]})
    assert moved.status_code == 200, moved.text
    assert docs.get("destinations", "dest-x")["path"] == "w"
    cached = {d.id: d.path for d in stage.config().destinations if d.id == "dest-x"}
    if stage.config._loaded_at == loaded_at:  # still the read from before the change
        assert cached == {"dest-x": "y"}
    time.sleep(max(0.0, loaded_at + STAGE_TTL_S + 0.2 - time.monotonic()))
    config = stage.config()
    assert {d.id: d.path for d in config.destinations if d.id == "dest-x"} == {"dest-x": "w"}
    rulesets = {r.id: r for r in config.rulesets}
    assert rulesets["to-x"].rules[0].when.value == "MR"
    assert "ct-chest-routing" in rulesets

    assert client.delete(f"{url}/rulesets/to-x", headers=auth).status_code == 204
    assert client.delete(f"{url}/destinations/dest-x", headers=auth).status_code == 204
    assert "dest-x" not in client.get(f"{url}/destinations", headers=auth).text


def test_status_health_and_openapi_through_the_function(function):
    client, auth, docs, stage = function
    counters.count(stage, counters.destination("primary-storage"), enqueued=3, delivered=2, error="peer refused")
    status = client.get(f"{PREFIX}/status", headers=auth)
    assert status.status_code == 200, status.text
    primary = status.json()["destinations"]["primary-storage"]
    assert (primary["delivered"], primary["queued"], primary["last_error"]) == (2, 1, "peer refused")

    health = client.get(f"{PREFIX}/health", headers=auth)
    assert health.status_code == 200, health.text
    assert health.json()["checks"]["documents"] == {"ok": True, "checked": True}
    assert health.json()["checks"]["blobs"] == {"ok": True, "checked": True}

    document = client.get(f"{PREFIX}/openapi.json")
    assert document.status_code == 200
    assert f"{PREFIX}/config/{{kind}}/{{doc_id}}" in document.json()["paths"]
    assert client.get(f"{PREFIX}/nothing-here", headers=auth).status_code == 404
