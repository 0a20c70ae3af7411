"""Hostile HTTP against ``axiom-flow serve``: foreign Host names (DNS rebinding) on
the API (``/api/v1``), bodies that never come, slow headers, and a large STOW-RS body
that must not be held in memory. Loopback only."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from shared import http
from shared.http import HostCheck
from tests.support import fuzz
from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, read_until_closed, wait_for

KEY = "http-key-0123456789abcdef"
ENV = {"AXIOM_TEST_STOW_KEYS": KEY, "AXIOM_HTTP_ALLOWED_HOSTS": "router.example, pacs.example:9999"}
CONFIG = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
          "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
          "stow": {"api_keys": "env:AXIOM_TEST_STOW_KEYS"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with AxiomServer(tmp_path_factory.mktemp("http") / "data", CONFIG, env=ENV) as srv:
        yield srv


def get(server, path: str, host: str | None, method: str = "GET", headers: dict | None = None) -> httpx.Response:
    headers = {**(headers or {}), **({} if host is None else {"Host": host})}
    return httpx.request(method, f"http://127.0.0.1:{server.http_port}{path}", headers=headers, timeout=10)


def instance_bytes(patient_id: str = "AXF-HTTP") -> bytes:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 20) -> bytes:
    """Send ``head`` (and ``body``) on a fresh connection; everything answered until the
    server closes or ``timeout`` passes without a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        return read_until_closed(sock)


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body or b"{}")


# --- Host check (item 3) --------------------------------------------------------------


@pytest.mark.parametrize("path,method", [("/api/v1/status", "GET"), ("/api/v1/exceptions", "GET"),
                                         ("/api/v1/exceptions/0123/retry", "POST"), ("/api/v1/openapi.json", "GET")])
def test_the_api_refuses_names_that_are_not_the_servers(server, path, method):
    """Even with a valid key: a rebinding page must not reach the API at all."""
    port = server.http_port
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1:{port + 1}", f"pacs.example:{port}",
                 "localhost.attacker.example", "127.0.0.1.nip.io"):
        answer = get(server, path, host, method, server.auth)
        assert answer.status_code == 421, host
        assert "Host" in answer.json()["error"] and answer.json()["status"] == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "router.example", "ROUTER.example.:8443",
                 "pacs.example:9999"):
        answer = get(server, path, host, method, server.auth)
        assert answer.status_code == (200 if method == "GET" else 404), host


def test_the_old_control_routes_are_gone(server):
    for path, method in (("/status", "GET"), ("/exceptions", "GET"), ("/exceptions/0123/retry", "POST")):
        assert get(server, path, "localhost", method).status_code == 404, path


def test_request_without_host_is_refused(server):
    status, body = status_and_json(raw_request(server.http_port, b"GET /api/v1/status HTTP/1.0\r\n\r\n"))
    assert status == 421 and body["status"] == 421


def test_health_and_stow_answer_any_host(server):
    """/healthz says nothing; STOW-RS has its API keys and remote senders use names of
    their own (a DNS alias, a proxy): neither is host-checked."""
    assert get(server, "/healthz", "attacker.example").status_code == 200
    answer = httpx.post(f"http://127.0.0.1:{server.http_port}/dicomweb/studies", content=instance_bytes(), timeout=30,
                        headers={"Host": "stow-sender-alias.example", "X-API-Key": KEY,
                                 "Content-Type": "application/dicom"})
    assert answer.status_code == 200
    no_key = httpx.post(f"http://127.0.0.1:{server.http_port}/dicomweb/studies", content=instance_bytes(), timeout=30,
                        headers={"Host": "attacker.example", "Content-Type": "application/dicom"})
    assert no_key.status_code == 401


def test_host_check_rules():
    check = HostCheck("127.0.0.1", 8080, HostCheck.parse("router.example,[::1]:8080, pacs:9000"))
    assert check.allows("127.0.0.1:8080") and check.allows("localhost:1234") and check.allows("router.example:1")
    assert check.allows("[::1]:8080") and check.allows("pacs:9000") and check.allows("Router.Example.")
    assert not check.allows("127.0.0.1:8081") and not check.allows("127.0.0.1") and not check.allows("pacs:8080")
    assert not check.allows("") and not check.allows(None) and not check.allows("a b") and not check.allows("x:99999")
    assert not check.allows("10.1.2.3:8080")
    everywhere = HostCheck("0.0.0.0", 8080)
    # bound to every interface: any address (not a name) with the port
    assert everywhere.allows("10.1.2.3:8080") and everywhere.allows("[fe80::1]:8080")
    assert not everywhere.allows("10.1.2.3:80") and not everywhere.allows("evil.example:8080")
    with pytest.raises(ValueError):
        HostCheck.parse("router.example/status")


def test_cli_rejects_a_bad_allowed_host(tmp_path, capsys):
    from shared.cli import parse_args

    config = tmp_path / "c.yaml"
    config.write_text("destinations: []\n")
    with pytest.raises(SystemExit) as exit_:
        parse_args(["serve", "--config", str(config), "--http-allowed-hosts", "ok.example,not a host"])
    assert exit_.value.code == 2
    assert "not a host" in capsys.readouterr().err
    args = parse_args(["serve", "--config", str(config), "--http-allowed-hosts", "a.example, b.example:81"])
    assert args.http_allowed_hosts == ["a.example", "b.example:81"]


# --- early answers, timeouts, connection limit (item 9) -------------------------------


def stow_head(port: int, length: int, *, key: str | None = None, extra: bytes = b"") -> bytes:
    return (b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/dicom\r\n"
            b"Content-Length: %d\r\n" % (port, length) + (b"X-API-Key: %s\r\n" % key.encode() if key else b"")
            + extra + b"\r\n")


def test_body_that_never_comes_is_answered_from_the_headers(server):
    port = server.http_port
    status, body = status_and_json(raw_request(port, stow_head(port, 3_000_000_000), b"abc"))
    assert status == 401 and "API key" in body["error"]
    status, body = status_and_json(raw_request(port, stow_head(port, 3_000_000_000, key=KEY), b"abc"))
    assert status == 413 and "stow.max_request_bytes" in body["error"]
    # a client that waits for "100 Continue" is answered instead, and sends nothing
    answer = raw_request(port, stow_head(port, 3_000_000_000, extra=b"Expect: 100-continue\r\n"))
    assert answer.startswith(b"HTTP/1.1 401")
    # bodies to the API are refused too, before they are read
    status, _ = status_and_json(raw_request(port, b"POST /api/v1/exceptions/x/retry HTTP/1.1\r\nHost: localhost\r\n"
                                                  b"Content-Length: 900000000\r\n\r\n"))
    assert status == 413
    # and the server still works
    assert get(server, "/healthz", None).status_code == 200


def test_refused_upload_can_read_its_answer(server):
    """A client still sending a refused body reads the answer, not a reset (the body is
    read and dropped up to a bound)."""
    body = b"\0" * (5 * 1024 * 1024)
    answer = httpx.post(f"http://127.0.0.1:{server.http_port}/dicomweb/studies", content=body, timeout=30,
                        headers={"Content-Type": "application/dicom", "X-API-Key": "wrong-key-000000"})
    assert answer.status_code == 401 and answer.json()["error"] == "the API key is not valid"


def threads_and_fds(server) -> tuple[int, int]:
    stats = fuzz.process_tree(server.proc.pid, [])[server.proc.pid]
    return stats["threads"], stats["fds"]


def slow_clients(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the end of the headers
        socks.append(s)
    return socks


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed (or answered) a connection that never finished its headers."""
    sock.settimeout(0.01)
    try:
        sock.recv(1024)  # b"" at the close; an error answer before it counts as let go too
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_headers_hold_no_thread_and_are_closed(server):
    threads_before, fds_before = threads_and_fds(server)
    socks = slow_clients(server.http_port, 80)
    try:
        time.sleep(0.5)  # let the server accept them all
        threads, fds = threads_and_fds(server)
        assert threads <= threads_before + 1, "slow connections hold threads"
        assert get(server, "/healthz", None).status_code == 200  # under the connection limit: answered at once
        wait_for(lambda: all(closed_by_server(s) for s in socks), 60, interval=0.5,
                 what="the server to close connections whose headers never end")
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: threads_and_fds(server)[1] <= fds_before + 2, 30, interval=0.5,
             what="descriptors to return to their baseline")


def test_connection_limit_bounds_descriptors(server):
    _, fds_before = threads_and_fds(server)
    socks = slow_clients(server.http_port, http.CONNECTION_LIMIT + 60)
    try:
        time.sleep(1)
        _, fds = threads_and_fds(server)
        assert fds <= fds_before + http.CONNECTION_LIMIT + 2, "more connections open than the limit"
        # the ones past the limit wait in the backlog and are served once the first are timed out
        wait_for(lambda: all(closed_by_server(s) for s in socks), 90, interval=0.5,
                 what="every slow connection to be closed")
    finally:
        for s in socks:
            s.close()
    assert get(server, "/healthz", None).status_code == 200


def test_large_stow_body_is_spooled_not_held_in_memory(server, tmp_path):
    """About 64 MB of instances in one multipart request: the server's peak RSS grows
    far less than the body (waitress spools it to a file, STOW-RS reads it in chunks)."""
    files = make_ct_study(tmp_path / "ct", 120)
    boundary = uuid.uuid4().hex
    body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), p.read_bytes())
                    for p in files) + b"--%s--\r\n" % boundary.encode()
    headers = {"X-API-Key": KEY, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    url = f"http://127.0.0.1:{server.http_port}/dicomweb/studies"
    assert httpx.post(url, content=instance_bytes(), timeout=60,  # warm up the STOW-RS path
                      headers={"X-API-Key": KEY, "Content-Type": "application/dicom"}).status_code == 200
    peak_before = fuzz.process_tree(server.proc.pid, [])[server.proc.pid]["hwm_kb"]
    answer = httpx.post(url, content=body, headers=headers, timeout=300)
    assert answer.status_code == 200
    assert len(answer.json()["00081199"]["Value"]) == len(files)
    peak_after = fuzz.process_tree(server.proc.pid, [])[server.proc.pid]["hwm_kb"]
    assert peak_after - peak_before < len(body) // 1024 // 3, (peak_before, peak_after, len(body))
    assert [p for p in (server.data_dir / "tmp").rglob("*") if p.is_file()] == []
