"""The users-and-keys story of the API, run against any DocumentStore (SQLite here,
the Firestore emulator in tests/gcp), and Google ID tokens made the way Google makes
them: an RSA key of the test's own, its certificate served over HTTP like Google's
``oauth2/v1/certs``, tokens signed with google-auth."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared.api.app import PREFIX

ADMIN_EMAIL = "admin@example.org"


def api_key(key: str) -> dict:
    return {"Authorization": f"Api-Key {key}", "Host": "localhost"}


def users_and_keys(client, admin_key: str, docs) -> dict:
    """An admin makes a user and a key for them; the key works with the user's role, is
    listed without its secret, stops working when revoked; everything is audited.
    ``client``: an httpx-like client on the API's server. Returns what was made."""
    admin = api_key(admin_key)
    me = client.get(f"{PREFIX}/me", headers=admin)
    assert me.status_code == 200 and me.json()["role"] == "admin" and me.json()["email"] == ADMIN_EMAIL

    made = client.post(f"{PREFIX}/users", headers=admin, json={"email": "Viewer@Example.org", "role": "viewer"})
    assert made.status_code == 201, made.text
    viewer = made.json()
    assert viewer["email"] == "viewer@example.org" and viewer["role"] == "viewer" and not viewer["disabled"]
    again = client.post(f"{PREFIX}/users", headers=admin, json={"email": "VIEWER@example.org", "role": "editor"})
    assert again.status_code == 409

    created = client.post(f"{PREFIX}/users/{viewer['id']}/keys", headers=admin, json={"name": "dashboards"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    prefix, _, secret = key.partition(".")
    assert created.json()["prefix"] == prefix and len(prefix) == 8 and len(secret) >= 43  # 32 bytes, base64

    as_viewer = client.get(f"{PREFIX}/me", headers={"X-API-Key": key, "Host": "localhost"})
    assert as_viewer.status_code == 200 and as_viewer.json()["role"] == "viewer"
    assert as_viewer.json()["user_id"] == viewer["id"]
    assert client.get(f"{PREFIX}/users", headers=api_key(key)).status_code == 403

    listed = client.get(f"{PREFIX}/users/{viewer['id']}/keys", headers=admin)
    assert listed.status_code == 200
    [shown] = listed.json()
    assert shown["prefix"] == prefix and shown["name"] == "dashboards" and not shown["revoked"]
    assert shown["last_used"] is not None  # the use above
    assert secret not in listed.text and "hash" not in listed.text and "salt" not in listed.text
    stored = json.dumps(docs.get("api_keys", prefix))
    assert secret not in stored and "digest" in stored  # only the salted hash is kept

    wrong = client.get(f"{PREFIX}/me", headers=api_key(f"{prefix}.{'A' * 43}"))
    assert wrong.status_code == 401 and "Api-Key" in wrong.headers["WWW-Authenticate"]
    assert prefix not in wrong.text and "AAAA" not in wrong.text

    revoked = client.delete(f"{PREFIX}/keys/{prefix}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked"] and revoked.json()["revoked_at"]
    refused = client.get(f"{PREFIX}/me", headers=api_key(key))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"] and secret not in refused.text

    # a disabled user's keys stop working; enabled again, they work again
    second = client.post(f"{PREFIX}/users/{viewer['id']}/keys", headers=admin, json={"expires_in_days": 1}).json()
    assert datetime.fromisoformat(second["expires_at"]) > datetime.now(timezone.utc) + timedelta(hours=23)
    assert client.patch(f"{PREFIX}/users/{viewer['id']}", headers=admin, json={"disabled": True}).json()["disabled"]
    assert client.get(f"{PREFIX}/me", headers=api_key(second["key"])).status_code == 401
    client.patch(f"{PREFIX}/users/{viewer['id']}", headers=admin, json={"disabled": False, "role": "operator"})
    assert client.get(f"{PREFIX}/me", headers=api_key(second["key"])).json()["role"] == "operator"

    # the last enabled admin cannot go
    admin_id = me.json()["user_id"]
    assert client.patch(f"{PREFIX}/users/{admin_id}", headers=admin, json={"role": "viewer"}).status_code == 409
    assert client.delete(f"{PREFIX}/users/{admin_id}", headers=admin).status_code == 409

    log = client.get(f"{PREFIX}/audit", headers=admin, params={"user": ADMIN_EMAIL})
    assert log.status_code == 200
    actions = [e["action"] for e in log.json()["items"]]  # newest first
    assert actions[:6] == ["users.update", "users.update", "keys.create", "keys.revoke", "keys.create",
                           "users.create"], actions
    assert all(e["via"] == "api_key" and e["email"] == ADMIN_EMAIL for e in log.json()["items"][:6])
    assert secret not in log.text and second["key"] not in log.text
    keys_only = client.get(f"{PREFIX}/audit", headers=admin, params={"action": "keys.", "target": f"keys/{prefix}"})
    assert [e["action"] for e in keys_only.json()["items"]] == ["keys.revoke", "keys.create"]

    # deleting the user revokes their keys
    assert client.delete(f"{PREFIX}/users/{viewer['id']}", headers=admin).status_code == 204
    assert client.get(f"{PREFIX}/users/{viewer['id']}", headers=admin).status_code == 404
    assert client.get(f"{PREFIX}/me", headers=api_key(second["key"])).status_code == 401
    assert docs.get("api_keys", second["prefix"])["revoked"]
    return {"viewer": viewer, "prefix": prefix}


# --- Google ID tokens -------------------------------------------------------------------


class GoogleCerts:
    """An RSA key and an HTTP server publishing its certificate as Google publishes its
    own (``{key id: PEM certificate}``); :meth:`token` signs ID tokens with it."""

    def __init__(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key_id = uuid.uuid4().hex
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-google-certs")])
        now = datetime.now(timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
        self.private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        self.fetches = 0
        body = json.dumps({self.key_id: cert.public_bytes(serialization.Encoding.PEM).decode()}).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v1/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, audience: str, email: str, *, verified: bool = True, expires_in: int = 600,
              issuer: str = "https://accounts.google.com", signer_pem: bytes | None = None) -> str:
        from google.auth import crypt, jwt

        signer = crypt.RSASigner.from_string(signer_pem or self.private_pem, key_id=self.key_id)
        now = int(time.time())
        return jwt.encode(signer, {"iss": issuer, "aud": audience, "sub": "1234567890", "email": email,
                                   "email_verified": verified, "iat": now - 5, "exp": now + expires_in}).decode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
