"""The spanner's C-FIND over TLS (PS3.15 B.1): the client reads the source's TLS secrets
once and its worker process builds the SSL context from them. The peer is a pynetdicom
Query/Retrieve SCP on a TLS socket that requires a client certificate of our CA; a
source that trusts another CA fails alone, naming no secret."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest
from pydantic import TypeAdapter
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from shared.adapters.secrets import LocalSecrets
from shared.config import Source
from shared.spanner.clients import SourceError, client_for
from tests.support.certs import make_pki
from tests.support.procs import free_port

STUDIES = ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_scp(pki):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca.cert))
    context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    context.verify_mode = ssl.CERT_REQUIRED

    def on_find(event):
        for uid in STUDIES:
            found = Dataset()
            found.QueryRetrieveLevel = "STUDY"
            found.StudyInstanceUID = uid
            yield 0xFF00, found

    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_FIND, on_find)])
    yield port
    server.shutdown()


def source(port: int, pki, ca) -> Source:
    return TypeAdapter(Source).validate_python({
        "id": "tls-pacs", "type": "dimse_poller", "enabled": False, "ae_title": "TLSPACS", "host": "127.0.0.1",
        "port": port, "calling_ae": "AXIOM",
        "tls": {"ca": f"file:{ca}", "certificate": f"file:{pki.client.cert}", "key": "env:AXIOM_TEST_CLIENT_KEY"}})


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    return ds


def test_cfind_over_tls_with_secrets_read_here_and_the_context_built_in_the_worker(tls_scp, pki):
    secrets = LocalSecrets(env={"AXIOM_TEST_CLIENT_KEY": pki.client.key.read_text()})
    client = client_for(source(tls_scp, pki, pki.ca.cert), secrets)
    found = asyncio.run(client.search(study_query(), deadline=time.monotonic() + 10))
    assert [str(ds.StudyInstanceUID) for ds in found] == STUDIES


def test_a_source_that_trusts_another_ca_fails_alone(tls_scp, pki):
    secrets = LocalSecrets(env={"AXIOM_TEST_CLIENT_KEY": pki.client.key.read_text()})
    client = client_for(source(tls_scp, pki, pki.other_ca.cert), secrets)
    with pytest.raises(SourceError) as raised:
        asyncio.run(client.search(study_query(), deadline=time.monotonic() + 10))
    assert raised.value.source_id == "tls-pacs" and "BEGIN" not in str(raised.value)
