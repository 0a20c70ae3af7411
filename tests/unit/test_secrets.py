"""The Secrets port's adapters: env: and file: references everywhere, gsm: through
the real Secret Manager client (REST transport) against a local HTTP server that
answers as Secret Manager does."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import secretmanager

from shared.adapters.secret_manager import SecretManagerSecrets
from shared.adapters.secrets import LocalSecrets
from shared.errors import SecretError
from tests.support.procs import free_port

NAME = "projects/p/secrets/stow-keys/versions/3"


def test_env_and_file_references(tmp_path):
    (tmp_path / "key").write_bytes(b"s3cret\n")
    for secrets in (LocalSecrets({"KEY": "from-env"}), SecretManagerSecrets({"KEY": "from-env"})):
        assert secrets.get("env:KEY") == b"from-env"
        assert secrets.text(f"file:{tmp_path / 'key'}") == "s3cret"


@pytest.mark.parametrize("ref, says", [
    ("env:MISSING", "environment variable MISSING is not set"),
    ("file:/nonexistent/key", "No such file"),
    ("vault:x", "unknown scheme 'vault'"),
    (f"gsm:{NAME}", "read by the GCP runtime"),
])
def test_local_refusals_name_the_reference(ref, says):
    with pytest.raises(SecretError) as err:
        LocalSecrets({}).get(ref)
    assert ref in str(err.value) and says in str(err.value)


class _SecretManager(BaseHTTPRequestHandler):
    """``GET /v1/{name}:access`` as Secret Manager's REST API answers it."""

    secrets: dict[str, bytes] = {NAME: b"key-1\nkey-2\n"}
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        name = self.path.split("?")[0].removeprefix("/v1/").removesuffix(":access")
        if name in self.secrets:
            status, body = 200, {"name": name, "payload": {"data": base64.b64encode(self.secrets[name]).decode()}}
        else:
            status, body = 404, {"error": {"code": 404, "message": f"Secret [{name}] not found", "status": "NOT_FOUND"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def secret_manager():
    server = HTTPServer(("127.0.0.1", 0), _SecretManager)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _SecretManager.requests.clear()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def client(endpoint: str):
    return secretmanager.SecretManagerServiceClient(credentials=AnonymousCredentials(), transport="rest",
                                                    client_options=ClientOptions(api_endpoint=endpoint))


def test_gsm_reference_is_read_through_secret_manager(secret_manager):
    secrets = SecretManagerSecrets(client=client(secret_manager))
    assert secrets.get(f"gsm:{NAME}") == b"key-1\nkey-2\n"
    assert [p.split("?")[0] for p in _SecretManager.requests] == [f"/v1/{NAME}:access"]


def test_gsm_errors_name_the_reference_not_the_server_text(secret_manager):
    secrets = SecretManagerSecrets(client=client(secret_manager))
    with pytest.raises(SecretError) as err:
        secrets.get("gsm:projects/p/secrets/gone/versions/1")
    assert str(err.value) == "secret gsm:projects/p/secrets/gone/versions/1: Secret Manager answered NotFound"
    down = SecretManagerSecrets(client=client(f"http://127.0.0.1:{free_port()}"), timeout_s=2)
    with pytest.raises(SecretError, match="Secret Manager"):
        down.get(f"gsm:{NAME}")
