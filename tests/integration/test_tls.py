"""DICOM over TLS (PS3.15 B.1) both ways, with certificates made at test time: dcmtk
``storescu +tls`` into our gateway's listener, and our C-STORE destination into dcmtk
``storescp +tls``. Both sides require the peer's certificate; a certificate from
another CA is refused, and nothing is stored or delivered.

Every ``axiom-flow serve`` here runs with ``SSL_CERT_FILE`` naming the *other* CA, as
if it were a system CA: a configured ``tls.ca`` must be the only one trusted."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.certs import Pki, make_pki, tls_args
from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, StoreSCP, free_port, storescu, wait_for

pytestmark = pytest.mark.dcmtk


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    return make_ct_study(tmp_path_factory.mktemp("study") / "ct", 6, rows=128, columns=128)


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def route_exceptions(server: AxiomServer) -> list[dict]:
    return [e for e in server.exceptions() if e["stage"] == "route"]


# --- TLS into our gateway ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("gateway-tls")
    port = free_port()
    config = {
        "listeners": [{"id": "tls", "ae_title": "AXIOM", "host": "127.0.0.1", "port": port,
                       "tls": {"certificate": f"file:{pki.server.cert}", "key": f"file:{pki.server.key}",
                               "ca": "env:AXIOM_TEST_CA"}}],
        "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
    }
    env = {"AXIOM_TEST_CA": pki.ca.cert.read_text(), "SSL_CERT_FILE": str(pki.other_ca.cert)}
    with AxiomServer(tmp / "data", config, dicom_port=port, env=env) as server:
        yield server


def archived(server: AxiomServer) -> Counter:
    root = server.data_dir / "out"
    return Counter(uid(p) for p in root.rglob("*.dcm")) if root.exists() else Counter()



def test_storescu_over_tls_into_the_gateway(tls_server, pki, study):
    files = study[:3]
    result = storescu(tls_server.dicom_port, files, extra=tls_args(pki.client.key, pki.client.cert, pki.ca.cert))
    assert (result.stdout + result.stderr).count(b"Received Store Response (Success)") == len(files)
    wait_for(lambda: set(archived(tls_server)) >= {uid(p) for p in files}, 30, what="routed to the archive")
    tls_server.wait_idle()
    assert archived(tls_server) >= Counter({uid(p): 1 for p in files})
    for path in files:
        out = next((tls_server.data_dir / "out").rglob(f"{uid(path)}.dcm"))
        assert dcmread(out).PixelData == dcmread(path).PixelData


@pytest.mark.parametrize("who", ["client cert from another CA", "no client cert", "plain TCP",
                                 "client that does not trust our server"])
def test_gateway_refuses_untrusted_clients(tls_server, pki, study, who):
    path = study[3]
    extra = {
        "client cert from another CA": tls_args(pki.stranger.key, pki.stranger.cert, pki.ca.cert),
        "no client cert": ["+tla", "+cf", str(pki.ca.cert)],
        "plain TCP": [],
        "client that does not trust our server": tls_args(pki.client.key, pki.client.cert, pki.other_ca.cert),
    }[who]
    before = archived(tls_server)
    result = storescu(tls_server.dicom_port, [path], extra=extra + ["-to", "5", "-ta", "5", "-td", "5"], check=False,
                      timeout=60)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode != 0, output
    assert "Received Store Response" not in output
    tls_server.wait_idle()
    assert archived(tls_server) == before, "nothing stored"
    assert uid(path) not in archived(tls_server)


def test_a_silent_client_does_not_block_the_tls_listener(tls_server, pki, study):
    """A TCP connection that never starts its TLS handshake must not keep others out."""
    path = study[4]
    with socket.create_connection(("127.0.0.1", tls_server.dicom_port)):
        time.sleep(0.2)  # let the listener accept it
        started = time.monotonic()
        result = storescu(tls_server.dicom_port, [path], extra=tls_args(pki.client.key, pki.client.cert, pki.ca.cert)
                          + ["-to", "5", "-ta", "5"], check=False, timeout=10)
        output = (result.stdout + result.stderr).decode(errors="replace")
        assert result.returncode == 0, output
        assert time.monotonic() - started < 5
    wait_for(lambda: uid(path) in archived(tls_server), 30, what="routed to the archive")


# --- our SCU over TLS into storescp ---------------------------------------------------------


@pytest.fixture(scope="module")
def tls_storescp(tmp_path_factory, pki):
    """storescp +tls, requiring a client certificate signed by our CA (-rc, the default)."""
    scp = StoreSCP(tmp_path_factory.mktemp("storescp-tls") / "in",
                   extra=tls_args(pki.server.key, pki.server.cert, pki.ca.cert) + ["--require-peer-cert"])
    with scp:
        yield scp


def cstore_tls(scp: StoreSCP, dest_id: str, **tls) -> dict:
    return {"id": dest_id, "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port,
            "timeout_s": 5, "retry": {"max_attempts": 3, "initial_backoff_s": 0.2, "max_backoff_s": 1.0},
            "tls": tls}


def test_cstore_destination_over_tls(tmp_path, pki, study, tls_storescp):
    """With the right CA and a client certificate: delivered, once each. With a CA that
    did not sign storescp's certificate, or a client certificate storescp does not
    trust, or none: the association fails, is retried, and ends as an exception record."""
    good = {"ca": "env:AXIOM_TEST_CA", "certificate": f"file:{pki.client.cert}", "key": f"file:{pki.client.key}"}
    dests = [
        cstore_tls(tls_storescp, "good", **good),
        cstore_tls(tls_storescp, "wrong-ca", **{**good, "ca": f"file:{pki.other_ca.cert}"}),
        cstore_tls(tls_storescp, "untrusted-cert", **{**good, "certificate": f"file:{pki.stranger.cert}",
                                                         "key": f"file:{pki.stranger.key}"}),
        cstore_tls(tls_storescp, "no-cert", ca="env:AXIOM_TEST_CA"),
    ]
    config = {"destinations": dests,
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": [d["id"] for d in dests]}]}]}
    env = {"AXIOM_TEST_CA": pki.ca.cert.read_text(), "SSL_CERT_FILE": str(pki.other_ca.cert)}
    files = study[:2]
    before = set(tls_storescp.files())
    with AxiomServer(tmp_path / "data", config, env=env) as server:
        storescu(server.dicom_port, files)
        wait_for(lambda: len(route_exceptions(server)) >= 3 * len(files), 60, what="exception records")
        status = server.wait_idle()
        records = route_exceptions(server)
        assert status["deliveries"]["delivered"] == len(files)
    new = [p for p in tls_storescp.files() if p not in before]
    assert Counter(uid(p) for p in new) == Counter({uid(p): 1 for p in files})
    for path in files:
        got = next(p for p in new if uid(p) == uid(path))
        assert dcmread(got).PixelData == dcmread(path).PixelData
    assert sorted(r["destination_id"] for r in records) == sorted(["wrong-ca", "untrusted-cert", "no-cert"] * len(files))
    for record in records:
        assert record["status"] == "failed"
        assert record["reason"].startswith("after 3 attempt(s): association with STORESCP@127.0.0.1:"), record["reason"]
        assert record["retry"]["topic"] == "deliver"


def test_our_ca_pin_ignores_system_cas(tmp_path, pki, study):
    """storescp presenting a certificate from the other CA, which this server's system
    store (SSL_CERT_FILE) trusts: a destination configured with our CA refuses it."""
    scp = StoreSCP(tmp_path / "impostor",
                   extra=tls_args(pki.stranger.key, pki.stranger.cert, pki.ca.cert) + ["--require-peer-cert"])
    good = {"ca": "env:AXIOM_TEST_CA", "certificate": f"file:{pki.client.cert}", "key": f"file:{pki.client.key}"}
    config = {"destinations": [cstore_tls(scp, "pinned", **good)],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["pinned"]}]}]}
    env = {"AXIOM_TEST_CA": pki.ca.cert.read_text(), "SSL_CERT_FILE": str(pki.other_ca.cert)}
    with scp, AxiomServer(tmp_path / "data", config, env=env) as server:
        storescu(server.dicom_port, study[:1])
        wait_for(lambda: route_exceptions(server) or server.status()["deliveries"].get("delivered"), 30,
                 what="an exception record")
        status = server.wait_idle()
        assert status["deliveries"].get("delivered", 0) == 0, "delivered to a peer whose CA is not the configured one"
        assert scp.received_count() == 0
        [record] = route_exceptions(server)
        assert record["status"] == "failed" and record["reason"].startswith("after 3 attempt(s): ")
