"""``python -m scp_gateway`` with its listeners from the config in the Firestore
emulator: dcmtk storescu into a plain and a TLS listener (certificate, key and CA as
``env:`` secret references, read through the gateway's Secrets port), the data sets
landing in fake-gcs-server's ingest bucket byte for byte; a refused association
counted in Firestore; listeners opening and closing as the config changes; and
``python -m scp_gateway.healthcheck`` answering 0 while the gateway listens, 1 when
it does not."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from shared.config import parse_config
from shared.dicom.io import part10_layout
from shared.runtime import gcp as gcp_runtime
from tests.support.certs import Pki, make_pki, tls_args
from tests.support.dicomgen import make_ct_study
from tests.support.gcp import PROJECT, GatewayProcess, unique
from tests.support.procs import REPO, accepts_connections, free_port, storescu, wait_for, wait_port

pytestmark = pytest.mark.dcmtk

TRAILING_PADDING = 0xFFFCFFFC
TTL_S = 1  # AXIOM_CONFIG_TTL_S: how often the gateway looks at the config's revision


@dataclass
class Gw:
    proc: GatewayProcess
    docs: object
    bucket: str
    gcs: object
    pki: Pki
    ports: dict[str, int]
    spool: Path
    files: list[Path]

    def listeners(self, *extra: dict, drop: str | None = None) -> list[dict]:
        return [lsn for lsn in base_listeners(self.ports, self.pki) if lsn["id"] != drop] + list(extra)

    def objects(self) -> dict[str, tuple[bytes, dict]]:
        """SOP Instance UID -> (object bytes, its metadata) in the ingest bucket."""
        out = {}
        for blob in self.gcs.client().bucket(self.bucket).list_blobs():
            data = blob.download_as_bytes()
            out[str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = (data, blob.metadata or {})
        return out

    def diagnostics(self) -> str:
        return f"--- scp_gateway (alive={self.proc.alive()}) ---\n{self.proc.log_text()[-4000:]}"


def base_listeners(ports: dict[str, int], pki: Pki) -> list[dict]:
    return [
        {"id": "plain", "ae_title": "AXIOM", "host": "127.0.0.1", "port": ports["plain"],
         "calling_ae_titles": ["STORESCU"]},
        {"id": "secure", "ae_title": "AXIOM_TLS", "host": "127.0.0.1", "port": ports["secure"],
         "tls": {"certificate": "env:AXIOM_TEST_TLS_CERT", "key": "env:AXIOM_TEST_TLS_KEY", "ca": "env:AXIOM_TEST_CA"}},
    ]


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def data_set(data: bytes) -> bytes:
    offset, _ = part10_layout(data)
    assert offset is not None
    return data[offset:]


def healthcheck(spool: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scp_gateway.healthcheck"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "AXIOM_SPOOL_DIR": str(spool), **env}, timeout=60)


def study(folder: Path) -> list[Path]:
    """Six CT instances as storescu sends them: without the Data Set Trailing Padding
    (FFFC,FFFC) of pydicom's CT template, which dcmtk leaves out of what it sends."""
    files = make_ct_study(folder, 6, rows=64, columns=64)
    for path in files:
        ds = dcmread(path)
        if TRAILING_PADDING in ds:
            del ds[TRAILING_PADDING]
            ds.save_as(path, enforce_file_format=True)
    return files


@pytest.fixture(scope="module")
def gw(firestore_emulator, fake_gcs, gcp_logs, tmp_path_factory):
    from shared.adapters.firestore import FirestoreDocumentStore

    work = tmp_path_factory.mktemp("gcp-gateway")
    pki = make_pki(work / "pki")
    bucket, collections = unique("ingest"), unique("g") + "-"
    fake_gcs.create_buckets(bucket)
    docs = FirestoreDocumentStore(prefix=collections)
    ports = {"plain": free_port(), "secure": free_port()}
    gcp_runtime.load_config(parse_config({"listeners": base_listeners(ports, pki)}), docs)
    spool = work / "spool"
    env = {"GOOGLE_CLOUD_PROJECT": PROJECT, "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
           "STORAGE_EMULATOR_HOST": fake_gcs.url, "AXIOM_COLLECTION_PREFIX": collections,
           "AXIOM_CONFIG_TTL_S": str(TTL_S), "AXIOM_SPOOL_DIR": str(spool), "AXIOM_MIN_FREE_BYTES": "0",
           "AXIOM_LOG_FORMAT": "text", "AXIOM_TEST_TLS_CERT": pki.server.cert.read_text(),
           "AXIOM_TEST_TLS_KEY": pki.server.key.read_text(), "AXIOM_TEST_CA": pki.ca.cert.read_text()}
    proc = GatewayProcess(gcp_logs, env, bucket=bucket, port=ports["plain"])
    try:
        proc.start(timeout=60)
        wait_port(ports["secure"], timeout=30)
        yield Gw(proc=proc, docs=docs, bucket=bucket, gcs=fake_gcs, pki=pki, ports=ports, spool=spool,
                 files=study(work / "study"))
    finally:
        proc.stop()


def test_storescu_into_the_plain_and_the_tls_listener_lands_byte_for_byte(gw):
    plain, secure = gw.files[:2], gw.files[2:4]
    storescu(gw.ports["plain"], plain, called_ae="AXIOM", timeout=120)
    result = storescu(gw.ports["secure"], secure, called_ae="AXIOM_TLS", timeout=120,
                      extra=tls_args(gw.pki.client.key, gw.pki.client.cert, gw.pki.ca.cert))
    assert (result.stdout + result.stderr).count(b"Received Store Response (Success)") == len(secure)
    objects = gw.objects()  # Success is answered only once the upload returned: no waiting
    for listener, paths in (("plain", plain), ("secure", secure)):
        for path in paths:
            data, metadata = objects[uid(path)]
            assert data_set(data) == data_set(path.read_bytes()), gw.diagnostics()
            assert {v for k, v in metadata.items() if k.endswith("source_id")} == {listener}


def test_a_refused_association_is_counted_in_firestore(gw):
    result = storescu(gw.ports["plain"], gw.files[4:5], calling_ae="INTRUDER", check=False, timeout=60)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode != 0 and "Received Store Response" not in output, output
    counters = wait_for(lambda: (gw.docs.get("counters", "listener:plain") or {}).get("refused"), 30,
                        what="the refusal counted")
    assert counters == 1
    assert "INTRUDER" in gw.docs.get("counters", "listener:plain")["last_error"]
    assert uid(gw.files[4]) not in gw.objects()


def test_the_healthcheck_answers_0_while_the_gateway_listens(gw):
    wait_for(lambda: (gw.spool / "listeners.json").exists(), 10, what="the gateway's listeners.json")
    result = healthcheck(gw.spool)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "listener plain" in result.stdout and "C-ECHO Success" in result.stdout
    tls_only = healthcheck(gw.spool, AXIOM_HEALTHCHECK_PORT=str(gw.ports["secure"]))
    assert tls_only.returncode == 0, tls_only.stdout + tls_only.stderr
    nothing_there = healthcheck(gw.spool, AXIOM_HEALTHCHECK_PORT=str(free_port()))
    assert nothing_there.returncode == 1, nothing_there.stdout + nothing_there.stderr


def test_listeners_open_and_close_as_the_config_changes(gw):
    third = {"id": "third", "ae_title": "AXIOM3", "host": "127.0.0.1", "port": free_port()}
    gcp_runtime.load_config(parse_config({"listeners": gw.listeners(third, drop="secure")}), gw.docs)
    # the gateway looks at the revision every TTL_S; the margin is for loaded machines
    wait_for(lambda: accepts_connections(third["port"]), 10 * TTL_S + 10, what="the third listener open")
    wait_for(lambda: not accepts_connections(gw.ports["secure"]), 10 * TTL_S + 10, what="the TLS listener closed")
    assert accepts_connections(gw.ports["plain"])
    storescu(third["port"], gw.files[5:6], called_ae="AXIOM3", timeout=120)
    data, metadata = gw.objects()[uid(gw.files[5])]
    assert data_set(data) == data_set(gw.files[5].read_bytes())
    assert {v for k, v in metadata.items() if k.endswith("source_id")} == {"third"}


def test_the_healthcheck_answers_1_once_the_gateway_is_down(gw):
    gw.proc.stop()
    assert (gw.spool / "listeners.json").exists()  # what it last had open: the check must still say down
    result = healthcheck(gw.spool)
    assert result.returncode == 1, result.stdout + result.stderr
