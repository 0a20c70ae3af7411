"""HTTPS served by ``axiom-flow serve`` itself (--tls-cert/--tls-key, here through
AXIOM_TLS_CERT/AXIOM_TLS_KEY): real TLS with a throw-away CA (tests/support/certs.py),
clients that trust it or not, plain HTTP and silent clients on the TLS port, early
answers and a large body over TLS; the CLI's refusals; the no-TLS warning. Loopback only."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
import uuid

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from shared import http
from shared.cli import main, parse_args
from shared.http import HttpServer, create_app, missing_tls_internals, tls_context
from tests.support import fuzz
from tests.support.apiusers import api_key
from tests.support.certs import make_pki
from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, read_until_closed, wait_for
from tests.support.stageports import build_ports, config

KEY = "https-key-0123456789abcdef"
CONFIG = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
          "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
          "stow": {"api_keys": "env:AXIOM_TEST_STOW_KEYS"}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
    env = {"AXIOM_TEST_STOW_KEYS": KEY, "AXIOM_TLS_CERT": str(pki.server.cert), "AXIOM_TLS_KEY": str(pki.server.key)}
    with AxiomServer(tmp_path_factory.mktemp("https") / "data", CONFIG, env=env) as srv:
        srv.url = f"https://127.0.0.1:{srv.http_port}"
        yield srv


@pytest.fixture
def client(server, pki):
    with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(pki.ca.cert)),
                      timeout=60) as c:
        yield c


def instance_bytes() -> bytes:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def tls_socket(server, pki, **kwargs) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    raw = socket.create_connection(("127.0.0.1", server.http_port), timeout=20)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1", **kwargs)


def log_text(server) -> str:
    return server.log_path.read_text(errors="replace")


def test_api_and_health_over_https(server, client, capsys):
    assert client.get("/healthz").text == "ok\n"
    assert main(["users", "create-admin", "--email", "tls-admin@example.org", "--data-dir", str(server.data_dir)]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    me = client.get("/api/v1/me", headers=api_key(key))
    assert me.status_code == 200 and me.json()["email"] == "tls-admin@example.org"
    assert client.get("/api/v1/me", headers={"Host": "localhost"}).status_code == 401
    # several requests on one kept-alive TLS connection
    assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5
    assert "HTTP https://127.0.0.1:" in log_text(server)  # the startup line


def test_stow_over_https_stores_the_instance(server, client):
    sent = instance_bytes()
    uid = dcmread(io.BytesIO(sent)).SOPInstanceUID
    answer = client.post("/dicomweb/studies", content=sent, headers={"X-API-Key": KEY, "Content-Type": "application/dicom"})
    assert answer.status_code == 200, answer.text
    stored = lambda: [p for p in (server.data_dir / "out").rglob("*.dcm") if dcmread(p).SOPInstanceUID == uid]  # noqa: E731
    [out] = wait_for(stored, 60, what="the instance at the archive")
    assert out.read_bytes() == sent


def stow_head(port: int, length: int, key: str | None) -> bytes:
    return (b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/dicom\r\n"
            b"Content-Length: %d\r\n" % (port, length) + (b"X-API-Key: %s\r\n" % key.encode() if key else b"") + b"\r\n")


@pytest.mark.parametrize("key,status", [("wrong-key-0000000000", 401), (KEY, 413)])
def test_early_answer_over_tls_before_the_body(server, pki, key, status):
    """The headers alone are answered (wrong key; a body over stow.max_request_bytes),
    the body never sent; then our close_notify (a clean TLS close, not a bare EOF)."""
    with tls_socket(server, pki, suppress_ragged_eofs=False) as sock:
        sock.sendall(stow_head(server.http_port, 3_000_000_000, key))
        answer = read_until_closed(sock)  # SSLEOFError here, were the TLS close not clean
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]


def test_large_body_streams_over_tls_without_memory_growing(server, client, tmp_path):
    files = make_ct_study(tmp_path / "ct", 120)
    boundary = uuid.uuid4().hex
    body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), p.read_bytes())
                    for p in files) + b"--%s--\r\n" % boundary.encode()
    assert len(body) > 60 * 1024 * 1024
    headers = {"X-API-Key": KEY, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    assert client.post("/dicomweb/studies", content=instance_bytes(),  # warm up the STOW-RS path
                       headers={"X-API-Key": KEY, "Content-Type": "application/dicom"}).status_code == 200
    peak_before = fuzz.process_tree(server.proc.pid, [])[server.proc.pid]["hwm_kb"]
    answer = client.post("/dicomweb/studies", content=body, headers=headers, timeout=300)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["00081199"]["Value"]) == len(files)
    peak_after = fuzz.process_tree(server.proc.pid, [])[server.proc.pid]["hwm_kb"]
    assert peak_after - peak_before < len(body) // 1024 // 3, (peak_before, peak_after, len(body))


def test_client_that_does_not_trust_the_ca_fails_verification(server, pki, client):
    stranger = ssl.create_default_context(cafile=str(pki.other_ca.cert))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/healthz", verify=stranger, timeout=10)
    wait_for(lambda: "TLSV1_ALERT_UNKNOWN_CA" in log_text(server), 10, what="the handshake failure in the log")
    assert client.get("/healthz").status_code == 200


def test_plain_http_to_the_tls_port_is_closed_and_the_server_goes_on(server, client):
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_until_closed(sock) == b""  # closed, nothing in clear
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=10)
    assert client.get("/healthz").status_code == 200
    text = log_text(server)
    line = next(s for s in text.splitlines() if "plain HTTP sent to the HTTPS port" in s)
    assert "127.0.0.1:" in line and "WARNING" in line
    assert "Traceback" not in text


def test_silent_client_is_closed_after_the_header_timeout(server, client):
    """A TCP connection that never starts (or finishes) its handshake holds the
    connection no longer than the header timeout."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=http.HEADER_TIMEOUT_S + 10) as sock:
        assert sock.recv(1) == b""
    waited = time.monotonic() - started
    assert http.HEADER_TIMEOUT_S - 0.5 < waited < http.HEADER_TIMEOUT_S + 5, waited
    assert "TLS handshake not finished within" in log_text(server)
    assert client.get("/healthz").status_code == 200


def test_curl_with_cacert(server, pki, capsys):
    """What the README shows."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    assert main(["users", "create-admin", "--email", "curl-admin@example.org", "--data-dir", str(server.data_dir)]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    done = subprocess.run([curl, "-sS", "--fail", "--cacert", str(pki.ca.cert), "-H", f"Authorization: Api-Key {key}",
                           f"{server.url}/api/v1/me"], capture_output=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout)["email"] == "curl-admin@example.org", done.stderr
    untrusted = subprocess.run([curl, "-sS", f"{server.url}/healthz"], capture_output=True, timeout=30)
    assert untrusted.returncode == 60  # "peer certificate cannot be authenticated with known CA certificates"

    # the command line, the same way
    assert main(["exceptions", "list", "--url", server.url, "--api-key", key, "--cacert", str(pki.ca.cert),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == []
    assert main(["exceptions", "list", "--url", server.url, "--api-key", key]) == 1  # the system does not trust it
    assert "certificate" in capsys.readouterr().err


# --- the command line and the warning --------------------------------------------------


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("destinations: []\n")
    return path


def refusal(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["serve", "--config", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_refuses_bad_tls_flags(config_file, pki, tmp_path, capsys, monkeypatch):
    cert, key, c = str(pki.server.cert), str(pki.server.key), str(config_file)
    assert "go together" in refusal(capsys, c, "--tls-cert", cert)
    assert "go together" in refusal(capsys, c, "--tls-key", key)
    assert "no such file" in refusal(capsys, c, "--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", key)
    assert "does not belong to the certificate" in refusal(capsys, c, "--tls-cert", cert, "--tls-key",
                                                           str(pki.client.key))
    assert "not a PEM certificate" in refusal(capsys, c, "--tls-cert", key, "--tls-key", key)
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(pki.server.key.read_bytes())
    unreadable.chmod(0)
    try:
        with open(unreadable, "rb"):
            readable_anyway = True  # root reads every file
    except PermissionError:
        readable_anyway = False
    if not readable_anyway:
        assert "permission denied" in refusal(capsys, c, "--tls-cert", cert, "--tls-key", str(unreadable))
    monkeypatch.setenv("AXIOM_TLS_CERT", cert)
    assert "go together" in refusal(capsys, c)
    monkeypatch.setenv("AXIOM_TLS_KEY", key)
    assert isinstance(parse_args(["serve", "--config", c]).tls, ssl.SSLContext)
    monkeypatch.delenv("AXIOM_TLS_CERT")
    monkeypatch.delenv("AXIOM_TLS_KEY")
    assert parse_args(["serve", "--config", c]).tls is None


def test_beyond_loopback_without_tls_warns_once(tmp_path, pki, caplog):
    ports = build_ports(tmp_path, config({"id": "all", "destinations": []}))
    app = create_app(ports, status=dict, stow=False, api=False)
    tls = tls_context(pki.server.cert, pki.server.key)
    for host, context, warned in (("0.0.0.0", None, True), ("0.0.0.0", tls, False), ("127.0.0.1", None, False)):
        caplog.clear()
        server = HttpServer(app, host, 0, max_request_body=1024, tls=context)
        with caplog.at_level(logging.WARNING, logger="shared.http"):
            server.start()
        server.stop()
        warnings = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
        assert len(warnings) == int(warned), (host, warnings)
        if warned:
            assert host in warnings[0] and "--tls-cert/--tls-key" in warnings[0]


def test_https_refuses_to_start_without_the_waitress_internals_it_relies_on(tmp_path, pki, monkeypatch):
    from waitress.channel import HTTPChannel

    assert missing_tls_internals() == []  # the pinned waitress has them
    app = create_app(build_ports(tmp_path, config({"id": "all", "destinations": []})), status=dict, stow=False, api=False)
    monkeypatch.delattr(HTTPChannel, "_flush_some")  # as a waitress that renamed it would be
    with pytest.raises(RuntimeError, match="HTTPChannel._flush_some"):
        HttpServer(app, "127.0.0.1", 0, max_request_body=1024, tls=tls_context(pki.server.cert, pki.server.key))
