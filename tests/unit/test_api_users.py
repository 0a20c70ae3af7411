"""Users, API keys, Google ID tokens and the audit log through serve's real HTTP server
(HttpServer + create_app) over the embedded SQLite store; the first admin made by the
command line in the same state.db; STOW-RS with users' keys; the TLS warning."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from shared.api import keys, users
from shared.api.app import PREFIX
from shared.api.auth import AUDIENCE_ENV, CERTS_URL_ENV
from shared.api.permissions import Role
from shared.cli import main
from shared.http import HttpServer, create_app
from tests.support.apiusers import ADMIN_EMAIL, GoogleCerts, api_key, users_and_keys
from tests.support.stageports import build_ports, config

AUDIENCE = "https://axiom-flow.example/api"
LEGACY = "legacy-stow-key-0123456789"
CT = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def ports(tmp_path, monkeypatch):
    monkeypatch.setenv("AXIOM_TEST_LEGACY_STOW_KEYS", f"{LEGACY}\n")
    return build_ports(tmp_path, {**config({"id": "all", "destinations": ["archive"]}),
                                  "stow": {"api_keys": "env:AXIOM_TEST_LEGACY_STOW_KEYS"}})


@pytest.fixture
def client(ports):
    server = HttpServer(create_app(ports, status=dict), "127.0.0.1", 0, max_request_body=1 << 24)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as c:
            c.port = server.port
            yield c
    finally:
        server.stop()


def create_admin(tmp_path, capsys, email=ADMIN_EMAIL) -> str:
    """The command line's new key: its last line."""
    assert main(["users", "create-admin", "--email", email, "--data-dir", str(tmp_path)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_first_admin_from_the_command_line_then_users_and_keys_over_http(tmp_path, capsys, ports, client):
    admin_key = create_admin(tmp_path, capsys)
    users_and_keys(client, admin_key, ports.docs)
    # the command line's own changes are audited too, as made there
    made = client.get(f"{PREFIX}/audit", headers=api_key(admin_key), params={"action": "users.create"}).json()
    assert [(e["email"], e["via"], e["after"]["email"]) for e in made["items"]] == [
        (ADMIN_EMAIL, "api_key", "viewer@example.org"), (None, "cli", ADMIN_EMAIL)]


def test_audit_paging_and_time_range(tmp_path, capsys, ports, client):
    admin = api_key(create_admin(tmp_path, capsys))
    for n in range(5):
        assert client.post(f"{PREFIX}/users", headers=admin, json={"email": f"u{n}@example.org", "role": "viewer"}
                           ).status_code == 201
    seen, cursor = [], None
    while True:
        page = client.get(f"{PREFIX}/audit", headers=admin,
                          params={"limit": 2, "action": "users.create", **({"cursor": cursor} if cursor else {})}).json()
        seen += [e["after"]["email"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"u{n}@example.org" for n in reversed(range(5))] + [ADMIN_EMAIL]
    everything = client.get(f"{PREFIX}/audit", headers=admin).json()["items"]
    middle = everything[3]["at"]
    older = client.get(f"{PREFIX}/audit", headers=admin, params={"until": middle}).json()["items"]
    assert [e["id"] for e in older] == [e["id"] for e in everything[4:]]
    newer = client.get(f"{PREFIX}/audit", headers=admin, params={"since": middle}).json()["items"]
    assert [e["id"] for e in newer] == [e["id"] for e in everything[:4]]
    assert client.get(f"{PREFIX}/audit", headers=admin, params={"since": "yesterday"}).status_code == 422


def test_users_list_filters_and_pages(tmp_path, capsys, ports, client):
    admin = api_key(create_admin(tmp_path, capsys))
    for n, role in enumerate(["viewer", "editor", "viewer"]):
        client.post(f"{PREFIX}/users", headers=admin, json={"email": f"p{n}@example.org", "role": role})
    viewers = client.get(f"{PREFIX}/users", headers=admin, params={"role": "viewer"}).json()["items"]
    assert sorted(u["email"] for u in viewers) == ["p0@example.org", "p2@example.org"]
    first = client.get(f"{PREFIX}/users", headers=admin, params={"limit": 3}).json()
    rest = client.get(f"{PREFIX}/users", headers=admin, params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert len(first["items"]) == 3 and len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert client.post(f"{PREFIX}/users", headers=admin, json={"email": "not an email", "role": "viewer"}
                       ).status_code == 422
    assert client.post(f"{PREFIX}/users", headers=admin, json={"email": "x@example.org", "role": "root"}
                       ).status_code == 422


def test_credentials_refused_with_a_challenge_and_never_echoed(ports, client):
    user = users.create(ports.docs, "e@example.org", Role.EDITOR)
    key, _ = keys.create(ports.docs, user.id)
    expired, made = keys.create(ports.docs, user.id)
    ports.docs.set("api_keys", made["prefix"], {**ports.docs.get("api_keys", made["prefix"]),
                                                "expires_at": "2001-01-01T00:00:00+00:00"})
    cases = {
        "none": {},
        "not a key": {"X-API-Key": "hello"},
        "unknown prefix": api_key("zzzzzzzz." + "B" * 43),
        "wrong secret": api_key(key.split(".")[0] + "." + "C" * 43),
        "expired": api_key(expired),
        "other scheme": {"Authorization": f"Basic {key}"},
    }
    for what, headers in cases.items():
        got = client.get(f"{PREFIX}/me", headers={"Host": "localhost", **headers})
        assert got.status_code == 401, what
        assert got.headers["WWW-Authenticate"].startswith("Api-Key"), what
        assert key.split(".")[1] not in got.text and expired.split(".")[1] not in got.text, what
    assert "expired" in client.get(f"{PREFIX}/me", headers=api_key(expired)).json()["detail"]
    assert client.get(f"{PREFIX}/me", headers=api_key(key)).json()["role"] == "editor"


def test_last_used_is_written_at_most_once_a_minute(ports, client, monkeypatch):
    user = users.create(ports.docs, "lu@example.org", Role.VIEWER)
    key, made = keys.create(ports.docs, user.id)
    writes = []
    real_set = ports.docs.set
    monkeypatch.setattr(ports.docs, "set", lambda c, i, d: (writes.append(c), real_set(c, i, d)))
    for _ in range(5):
        assert client.get(f"{PREFIX}/me", headers=api_key(key)).status_code == 200
    assert writes.count("api_key_uses") == 1
    assert keys.of_user(ports.docs, user.id)[0]["last_used"] is not None


def test_the_revoked_key_answers_when_it_was_last_used(tmp_path, capsys, ports, client):
    admin_key = create_admin(tmp_path, capsys)
    user = users.create(ports.docs, "rv@example.org", Role.VIEWER)
    key, made = keys.create(ports.docs, user.id)
    assert client.get(f"{PREFIX}/me", headers=api_key(key)).status_code == 200
    revoked = client.delete(f"{PREFIX}/keys/{made['prefix']}", headers=api_key(admin_key)).json()
    assert revoked["revoked"] and revoked["last_used"] == keys.of_user(ports.docs, user.id)[0]["last_used"]
    assert revoked["last_used"] is not None


# --- Google ID tokens -------------------------------------------------------------------


@pytest.fixture
def google(monkeypatch):
    certs = GoogleCerts()
    monkeypatch.setenv(AUDIENCE_ENV, f"other-audience, {AUDIENCE}")
    monkeypatch.setenv(CERTS_URL_ENV, certs.url)
    yield certs
    certs.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Host": "localhost"}


def test_google_id_token_names_its_user_by_verified_email(ports, client, google):
    users.create(ports.docs, "Op@Example.org", Role.OPERATOR)
    got = client.get(f"{PREFIX}/me", headers=bearer(google.token(AUDIENCE, "op@example.org")))
    assert got.status_code == 200, got.text
    assert got.json()["role"] == "operator" and got.json()["via"] == "google"
    # the certificates are fetched once and reused
    assert client.get(f"{PREFIX}/me", headers=bearer(google.token(AUDIENCE, "OP@example.org"))).status_code == 200
    assert google.fetches == 1


def test_google_id_tokens_that_do_not_hold(ports, client, google, monkeypatch):
    users.create(ports.docs, "op@example.org", Role.OPERATOR)
    users.create(ports.docs, "off@example.org", Role.ADMIN, disabled=True)
    other = GoogleCerts()  # a key Google never published
    try:
        refused = {
            "wrong audience": google.token("https://elsewhere.example", "op@example.org"),
            "expired": google.token(AUDIENCE, "op@example.org", expires_in=-120),
            "forged": google.token(AUDIENCE, "op@example.org", signer_pem=other.private_pem),
            "unverified email": google.token(AUDIENCE, "op@example.org", verified=False),
            "not Google's issuer": google.token(AUDIENCE, "op@example.org", issuer="https://evil.example"),
            "no such user": google.token(AUDIENCE, "nobody@example.org"),
            "disabled user": google.token(AUDIENCE, "off@example.org"),
            "not a token": "abc.def.ghi",
        }
    finally:
        other.close()
    for what, token in refused.items():
        got = client.get(f"{PREFIX}/me", headers=bearer(token))
        assert got.status_code == 401, (what, got.text)
        assert "Bearer" in got.headers["WWW-Authenticate"] and token not in got.text, what
    monkeypatch.delenv(AUDIENCE_ENV)
    got = client.get(f"{PREFIX}/me", headers=bearer(google.token(AUDIENCE, "op@example.org")))
    assert got.status_code == 401 and AUDIENCE_ENV in got.json()["detail"]


# --- STOW-RS with users' keys -----------------------------------------------------------


def stow(client, headers: dict):
    return client.post("/dicomweb/studies", content=CT.read_bytes(), headers={
        "Content-Type": "application/dicom", "Accept": "application/dicom+json", **headers})


def test_stow_takes_keys_of_users_who_may_store(ports, client, caplog):
    ingest = users.create(ports.docs, "modality@example.org", Role.INGEST)
    viewer = users.create(ports.docs, "v@example.org", Role.VIEWER)
    ingest_key, made = keys.create(ports.docs, ingest.id)
    viewer_key, _ = keys.create(ports.docs, viewer.id)
    assert stow(client, {"Authorization": f"Api-Key {ingest_key}"}).status_code == 200
    assert stow(client, {"X-API-Key": ingest_key}).status_code == 200
    assert len(ports.events) == 2  # both stored into the ingest bucket
    refused = stow(client, {"X-API-Key": viewer_key})
    assert refused.status_code == 403 and "viewer" in refused.json()["error"]
    keys.revoke(ports.docs, made["prefix"])
    refused = stow(client, {"X-API-Key": ingest_key})
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert len(ports.events) == 2

    with caplog.at_level(logging.WARNING, logger="shared.inputs.stow.auth"):
        from shared.inputs.stow import auth as stow_auth

        stow_auth._deprecation_logged.clear()
        assert stow(client, {"X-API-Key": LEGACY}).status_code == 200  # the deprecated secret still works
        assert stow(client, {"X-API-Key": LEGACY}).status_code == 200
    assert sum("deprecated" in r.getMessage() for r in caplog.records) == 1
    assert len(ports.events) == 4


def raw_head(port: int, headers: bytes) -> bytes:
    """Send only a STOW-RS request's headers, announcing a 3 GB body, and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/dicom\r\n"
                     b"Content-Length: 3000000000\r\n" + headers + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_stow_refuses_users_keys_before_reading_the_body(ports, client):
    viewer = users.create(ports.docs, "v@example.org", Role.VIEWER)
    ingest = users.create(ports.docs, "i@example.org", Role.INGEST)
    viewer_key, _ = keys.create(ports.docs, viewer.id)
    ingest_key, _ = keys.create(ports.docs, ingest.id)
    assert raw_head(client.port, b"X-API-Key: %s\r\n" % viewer_key.encode()).startswith(b"HTTP/1.1 403")
    assert raw_head(client.port, b"X-API-Key: %s\r\n" % (ingest_key[:-2] + "xx").encode()).startswith(
        b"HTTP/1.1 401")
    # the key holds: the next refusal is the size, still before the body
    assert raw_head(client.port, b"X-API-Key: %s\r\n" % ingest_key.encode()).startswith(b"HTTP/1.1 413")


# --- the command line and serve --------------------------------------------------------


def test_create_admin_mistakes_are_one_line_and_a_non_zero_exit(tmp_path, capsys):
    assert main(["users", "create-admin", "--email", "nope", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    create_admin(tmp_path, capsys, "first@example.org")
    # an admin again: a new key for the same user (a lost key)
    second = create_admin(tmp_path, capsys, "first@example.org")
    docs = build_ports(tmp_path, {}).docs
    assert [u.email for u in users.all_users(docs)] == ["first@example.org"]
    assert keys.verify(docs, second).email == "first@example.org"
    users.create(docs, "viewer@example.org", Role.VIEWER)
    assert main(["users", "create-admin", "--email", "viewer@example.org", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "role viewer" in err
    assert main(["keys", "revoke", "abcdefgh", "--data-dir", str(tmp_path)]) == 1
    assert "no API key" in capsys.readouterr().err
    assert main(["users", "list", "--data-dir", str(tmp_path)]) == 0
    assert "viewer@example.org" in capsys.readouterr().out
    prefix = second.split(".")[0]
    assert main(["keys", "revoke", prefix, "--data-dir", str(tmp_path)]) == 0
    with pytest.raises(keys.KeyRefused, match="revoked"):
        keys.verify(docs, second)


def test_http_beyond_loopback_warns_that_there_is_no_tls(ports, caplog):
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        caplog.clear()
        server = HttpServer(create_app(ports, status=dict, stow=False, api=False), host, 0, max_request_body=1024)
        with caplog.at_level(logging.WARNING, logger="shared.http"):
            server.start()
        server.stop()
        assert any("without TLS" in r.getMessage() for r in caplog.records) is warned, host
