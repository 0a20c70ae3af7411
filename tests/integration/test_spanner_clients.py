"""The spanner's per-source clients against the bed of eight Orthanc servers
(tests/support/spanner_bed.py): QIDO-RS and C-FIND answers checked against what each
server holds, paging on the wire, deadlines against the slow source (with the C-CANCEL
seen on the wire), the down source failing fast, and searches running concurrently."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from pydantic import TypeAdapter
from pydicom.dataset import Dataset

import shared.httpauth
from shared.config import Source
from shared.spanner import workers
from shared.spanner.clients import CFindClient, QidoClient, SourceError, SourceTimeout, client_for
from tests.support.procs import free_port, wait_for
from tests.support.spanner_bed import CONFLICT_NAME, spanner_bed  # noqa: F401 (fixture)

STUDY_UID, SERIES_COUNT, PATIENT_NAME = "0020000D", "00201206", "00100010"
# a C-CANCEL-RQ on the wire: Command Field (0000,0100) = 0x0FFF, Implicit VR Little Endian (PS3.7 6.3.1, E.1)
C_CANCEL_COMMAND_FIELD = bytes.fromhex("0000000102000000ff0f")


def client(config: dict, **kwargs) -> QidoClient | CFindClient:
    source = TypeAdapter(Source).validate_python(config)
    if kwargs:
        return QidoClient(source.id, source.url, **kwargs)
    return client_for(source, secrets=None)


def study_identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    ds.NumberOfStudyRelatedSeries = ""
    return ds


def qido_studies(rows: list[dict]) -> dict[str, dict]:
    return {r[STUDY_UID]["Value"][0]: r for r in rows}


async def search(c, *, within: float = 10.0, params=None, close: bool = True):
    deadline = time.monotonic() + within
    try:
        if isinstance(c, QidoClient):
            return await c.search("studies", params if params is not None else [("includefield", "00201206")],
                                  deadline=deadline)
        return await c.search(study_identifier(), deadline=deadline)
    finally:
        if close:
            await c.aclose()


def qido_sources(bed):
    return [s for s in bed.sources if s["type"] == "dicomweb_poller"]


def dimse_sources(bed):
    return [s for s in bed.sources if s["type"] == "dimse_poller"]


def test_the_bed_has_overlap_conflicts_and_partial_series(spanner_bed):  # noqa: F811
    bed = spanner_bed
    holders = {uid: [sid for sid, held in bed.truth.items() if uid in held] for uid in bed.studies}
    assert len(bed.sources) == 8 and len(bed.studies) == 12
    assert len(qido_sources(bed)) == 4 and len(dimse_sources(bed)) == 4
    assert max(len(h) for h in holders.values()) == 3 and min(len(h) for h in holders.values()) == 1
    partial = [(uid, sid) for uid, study in bed.studies.items() for sid in holders[uid]
               if bed.truth[sid][uid] < len(study["series"])]
    assert len(partial) == 2
    assert {bed.names[sid][bed.conflict_study] for sid in holders[bed.conflict_study]} == \
        {bed.studies[bed.conflict_study]["patient_name"], CONFLICT_NAME}


def test_qido_study_search_returns_each_servers_studies_and_series_counts(spanner_bed):  # noqa: F811
    for config in qido_sources(spanner_bed):
        rows = asyncio.run(search(client(config)))
        found = qido_studies(rows)
        sid = config["id"]
        assert len(rows) == len(found)
        assert {uid: r[SERIES_COUNT]["Value"][0] for uid, r in found.items()} == spanner_bed.truth[sid], sid
        assert {uid: r[PATIENT_NAME]["Value"][0]["Alphabetic"] for uid, r in found.items()} == \
            spanner_bed.names[sid], sid


def test_qido_pages_with_limit_and_offset_until_a_short_page(spanner_bed):  # noqa: F811
    bed = spanner_bed
    bed.set_delay(0)
    bed.proxy.client_bytes["http"].clear()
    web = bed.slow_dicomweb  # the same server as pacs-8, whose requests the proxy sees
    expected = bed.truth["pacs-8"]
    assert len(expected) == 3

    rows = asyncio.run(search(client(web, page_size=2), params=[]))
    assert sorted(qido_studies(rows)) == sorted(expected) and len(rows) == 3
    requests = re.findall(rb"GET /dicom-web/studies\?(\S*) HTTP", bytes(bed.proxy.client_bytes["http"]))
    assert [dict(p.split(b"=") for p in q.split(b"&")) for q in requests] == [
        {b"limit": b"2", b"offset": b"0"}, {b"limit": b"2", b"offset": b"2"}]

    # four studies in pages of two: the third page comes back empty
    four = qido_sources(bed)[0]
    assert len(bed.truth[four["id"]]) == 4
    assert sorted(qido_studies(asyncio.run(search(client(four, page_size=2), params=[])))) == \
        sorted(bed.truth[four["id"]])

    # a caller's limit caps the rows, its offset is where they start
    first = asyncio.run(search(client(four, page_size=2), params=[("limit", "3")]))
    rest = asyncio.run(search(client(four, page_size=2), params=[("offset", "3")]))
    assert len(first) == 3 and len(rest) == 1
    assert sorted(qido_studies(first + rest)) == sorted(bed.truth[four["id"]])


def test_cfind_returns_each_servers_studies_as_datasets(spanner_bed):  # noqa: F811
    bed = spanner_bed
    bed.set_delay(0)
    bed.proxy.client_bytes["dicom"].clear()
    for config in dimse_sources(bed):
        found = asyncio.run(search(client(config)))
        sid = config["id"]
        assert all(isinstance(ds, Dataset) for ds in found)
        assert {ds.StudyInstanceUID: int(ds.NumberOfStudyRelatedSeries) for ds in found} == bed.truth[sid], sid
        assert {ds.StudyInstanceUID: str(ds.PatientName) for ds in found} == bed.names[sid], sid
    # answered in time: no C-CANCEL went to the slow source's server
    assert bed.proxy.client_bytes["dicom"] and C_CANCEL_COMMAND_FIELD not in bed.proxy.client_bytes["dicom"]


def test_a_study_on_a_qido_and_a_cfind_server_is_found_by_both(spanner_bed):  # noqa: F811
    bed = spanner_bed
    shared = next(uid for uid in bed.studies if uid in bed.truth["pacs-1"] and uid in bed.truth["pacs-5"])
    by_qido = qido_studies(asyncio.run(search(client(bed.source("pacs-1")))))
    by_cfind = {ds.StudyInstanceUID: ds for ds in asyncio.run(search(client(bed.source("pacs-5"))))}
    assert shared in by_qido and shared in by_cfind


def test_slow_qido_source_times_out_at_its_deadline(spanner_bed):  # noqa: F811
    bed = spanner_bed
    bed.set_delay(1.0)
    try:
        started = time.monotonic()
        with pytest.raises(SourceTimeout) as raised:
            asyncio.run(search(client(bed.slow_dicomweb), within=0.4))
        assert time.monotonic() - started < 0.4 + 0.5
        assert raised.value.source_id == bed.slow_dicomweb["id"]
    finally:
        bed.set_delay(0)


def test_slow_cfind_source_gets_a_c_cancel_at_its_deadline(spanner_bed):  # noqa: F811
    bed = spanner_bed
    bed.set_delay(0.4)  # the association is up after ~0.8 s, the answers would come at ~1.6 s
    bed.proxy.client_bytes["dicom"].clear()
    try:
        started = time.monotonic()
        with pytest.raises(SourceTimeout) as raised:
            asyncio.run(search(client(bed.slow), within=1.1))
        assert time.monotonic() - started < 1.1 + 0.5
        assert "C-CANCEL" in str(raised.value)
        assert C_CANCEL_COMMAND_FIELD in bed.proxy.client_bytes["dicom"]
        # the association ended (A-ABORT after the C-CANCEL): the proxy's connection closes
        wait_for(lambda: bed.proxy.open_connections == 0, 5, what="the slow source's connection to close")
    finally:
        bed.set_delay(0)
    # the server still answers the next query in full
    found = asyncio.run(search(client(bed.slow)))
    assert {ds.StudyInstanceUID for ds in found} == set(bed.truth[bed.slow["id"]])


@pytest.mark.parametrize("kind", ["dicomweb_poller", "dimse_poller"])
def test_down_source_fails_fast_with_source_error(spanner_bed, kind):  # noqa: F811
    config = next(s for s in spanner_bed.down if s["type"] == kind)
    started = time.monotonic()
    with pytest.raises(SourceError) as raised:
        asyncio.run(search(client(config), within=10))
    assert time.monotonic() - started < 1.0
    assert raised.value.source_id == config["id"]


def test_http_errors_become_source_errors_with_the_status_only(spanner_bed):  # noqa: F811
    config = {**qido_sources(spanner_bed)[0], "url": spanner_bed.orthancs["pacs-1"].url + "/no-such-root"}
    with pytest.raises(SourceError) as raised:
        asyncio.run(search(client(config)))
    assert raised.value.status == 404 and str(raised.value).endswith("QIDO-RS answered HTTP 404")


def test_a_healthcare_store_is_asked_with_google_credentials(monkeypatch, tmp_path):
    """Its client asks Application Default Credentials for a token first; without any,
    the search fails as this source's SourceError (no request leaves)."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setattr(shared.httpauth._GOOGLE, "_credentials", None)  # the process-wide ADC cache
    config = {"id": "hc", "type": "healthcare", "enabled": False, "project": "p", "location": "l", "dataset": "d",
              "dicom_store": "s", "endpoint": f"http://127.0.0.1:{free_port()}/v1"}
    with pytest.raises(SourceError) as raised:
        asyncio.run(search(client(config)))
    assert raised.value.source_id == "hc" and "DefaultCredentialsError" in str(raised.value)


def test_past_the_deadline_no_request_is_made(spanner_bed):  # noqa: F811
    for config in (qido_sources(spanner_bed)[0], dimse_sources(spanner_bed)[0]):
        with pytest.raises(SourceTimeout):
            asyncio.run(search(client(config), within=-1))


async def _timed(c) -> float:
    started = time.monotonic()
    await search(c, within=30)
    return time.monotonic() - started


async def _gather(configs) -> float:
    started = time.monotonic()
    await asyncio.gather(*(_timed(client(c)) for c in configs))
    return time.monotonic() - started


async def _four_each_on_one_client(configs) -> float:
    clients = [client(c) for c in configs]
    started = time.monotonic()
    try:
        found = await asyncio.gather(*(search(c, within=30, close=False) for c in clients for _ in range(4)))
    finally:
        for c in clients:
            await c.aclose()
    assert all(found)
    return time.monotonic() - started


def test_searches_run_concurrently(spanner_bed):  # noqa: F811
    bed = spanner_bed
    bed.set_delay(0.15)
    try:
        alone = {c["id"]: asyncio.run(_timed(client(c))) for c in [*bed.sources, bed.slow_dicomweb]}
        # the eight sources at once take about the slowest one's time
        together = asyncio.run(_gather(bed.sources))
        assert together < max(alone.values()) + 0.5, (together, alone)

        # eight searches of the slow server, four on one C-FIND client, four on one QIDO-RS
        # client: the slowest, not the sum
        one_after_another = 4 * alone[bed.slow["id"]] + 4 * alone[bed.slow_dicomweb["id"]]
        together = asyncio.run(_four_each_on_one_client([bed.slow, bed.slow_dicomweb]))
        assert together < alone[bed.slow["id"]] + 0.5 and together < 0.5 * one_after_another, (together, alone)
    finally:
        bed.set_delay(0)


def test_no_delay_turns_nagle_off_on_a_requested_association(spanner_bed):  # noqa: F811
    import socket

    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from shared.dicom import reactor

    source = next(s for s in spanner_bed.sources if s["type"] == "dimse_poller")
    ae = AE(ae_title="AXIOM")
    ae.connection_timeout = ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", source["port"], ae_title=source["ae_title"])
    try:
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # pynetdicom's own: Nagle on
        assert reactor.no_delay(assoc) is True
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


def test_cfind_searches_run_in_worker_processes_and_a_dead_worker_fails_its_search_alone(spanner_bed):  # noqa: F811
    """The C-FIND runs in a worker process of the pool; a worker killed in the middle of a
    search fails that search as a SourceError, and the next search gets a new pool."""
    bed = spanner_bed
    assert {ds.StudyInstanceUID for ds in asyncio.run(search(client(bed.source("pacs-5"))))} \
        == set(bed.truth["pacs-5"])
    pool = workers.executor()
    assert isinstance(pool, ProcessPoolExecutor)
    before = set(pool._processes)  # noqa: SLF001 - which processes to kill
    assert before and os.getpid() not in before
    bed.set_delay(0.5)  # the slow source's answers come after about 2 s
    try:
        async def killed_meanwhile():
            running = asyncio.ensure_future(search(client(bed.slow), within=10))
            await asyncio.sleep(0.5)
            for pid in set(pool._processes):  # noqa: SLF001
                os.kill(pid, signal.SIGKILL)
            return await running

        with pytest.raises(SourceError) as raised:
            asyncio.run(killed_meanwhile())
        assert "worker process ended unexpectedly" in str(raised.value)
    finally:
        bed.set_delay(0)
    assert {ds.StudyInstanceUID for ds in asyncio.run(search(client(bed.slow)))} == set(bed.truth[bed.slow["id"]])
    assert workers.executor() is not pool


def test_cfind_in_threads_when_no_worker_processes_are_wanted(spanner_bed, monkeypatch):  # noqa: F811
    monkeypatch.setenv(workers.PROCESSES_ENV, "0")
    monkeypatch.setattr(workers, "_executor", None)
    found = asyncio.run(search(client(bed_source := spanner_bed.source("pacs-6"))))
    assert {ds.StudyInstanceUID for ds in found} == set(spanner_bed.truth[bed_source["id"]])
    assert isinstance(workers.executor(), ThreadPoolExecutor)
    workers.executor().shutdown()


def test_a_bad_worker_count_is_named_in_a_warning_and_the_default_used(spanner_bed, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv(workers.PROCESSES_ENV, "many")
    monkeypatch.setattr(workers, "_executor", None)
    found = asyncio.run(search(client(bed_source := spanner_bed.source("pacs-6"))))
    assert {ds.StudyInstanceUID for ds in found} == set(spanner_bed.truth[bed_source["id"]])
    assert f"{workers.PROCESSES_ENV} is not a whole number of processes" in caplog.text
    assert workers.executor()._max_workers == workers.DEFAULT_PROCESSES  # noqa: SLF001


def test_a_worker_that_died_between_searches_costs_no_search(spanner_bed, caplog):  # noqa: F811
    bed = spanner_bed
    source = bed.source("pacs-7")
    asyncio.run(search(client(source)))
    pool = workers.executor()
    for pid in set(pool._processes):  # noqa: SLF001
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pool._broken, 10, what="the pool to see its workers gone")  # noqa: SLF001
    found = asyncio.run(search(client(source)))
    assert {ds.StudyInstanceUID for ds in found} == set(bed.truth[source["id"]])
    assert "a C-FIND worker process had ended; starting new ones" in caplog.text
