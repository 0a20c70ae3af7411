"""Users and API keys in Firestore (the emulator): the first admin made by
``axiom-flow users create-admin --gcp``, then the same story as over SQLite
(tests/support/apiusers.py) through the API over a Firestore document store."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from shared.api import keys, users
from shared.api.app import create_api
from shared.cli import main
from tests.support.apiusers import ADMIN_EMAIL, users_and_keys
from tests.support.gcp import PROJECT, unique
from tests.support.stageports import build_ports


@pytest.fixture
def firestore_docs(firestore_emulator, monkeypatch):
    from shared.adapters.firestore import FirestoreDocumentStore

    prefix = unique("api")
    monkeypatch.setenv("AXIOM_COLLECTION_PREFIX", prefix)  # read by the command line's --gcp
    return FirestoreDocumentStore(prefix=prefix)


def test_users_and_keys_in_firestore(firestore_docs, tmp_path, capsys):
    assert main(["users", "create-admin", "--gcp", "--project", PROJECT, "--email", ADMIN_EMAIL]) == 0
    admin_key = capsys.readouterr().out.strip().splitlines()[-1]
    assert keys.verify(firestore_docs, admin_key).email == ADMIN_EMAIL
    ports = dataclasses.replace(build_ports(tmp_path, {}), docs=firestore_docs)
    with TestClient(create_api(ports)) as client:
        made = users_and_keys(client, admin_key, firestore_docs)
    # nothing of it went to the embedded store
    assert build_ports(tmp_path, {}).docs.count("users") == 0
    assert firestore_docs.get("api_keys", made["prefix"])["revoked"]


def test_an_email_is_one_user_in_firestore(firestore_docs):
    user = users.create(firestore_docs, "one@example.org", "viewer")
    with pytest.raises(users.UserError) as refused:
        users.create(firestore_docs, "ONE@example.org", "admin")
    assert refused.value.status == 409
    assert users.by_email(firestore_docs, "One@Example.org") == user
    assert [u.email for u in users.all_users(firestore_docs)] == ["one@example.org"]
