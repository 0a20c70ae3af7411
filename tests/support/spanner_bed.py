"""The spanner's test bed: eight Orthanc servers with overlapping studies, one behind a
delaying TCP proxy (the slow source), and sources that point at a closed port (down).

Layout (``LAYOUT``): twelve studies with UIDs made at test time, each with one to three
series of one small CT instance; studies on one, two or three servers; study 4 on two
servers under two spellings of its PatientName; studies 5 and 8 each complete on one
server and with only their first series on another. ``pacs-1``..``pacs-4`` are asked by
QIDO-RS (Orthanc's DICOMweb plugin), ``pacs-5``..``pacs-8`` by C-FIND (Orthanc answers
with DicomAlwaysAllowFind); ``pacs-8`` is the slow one: its DICOM and HTTP ports are
reached through :class:`DelayProxy` (delay 0 until a test sets one).

Use the session fixture ``spanner_bed`` (import it into the test module)."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.orthanc import Orthanc
from tests.support.procs import free_port

SERVERS = 8
QIDO_SERVERS = range(0, 4)  # pacs-1..pacs-4; the others by C-FIND
SLOW_SERVER = 7  # pacs-8
# C-FIND answered from Orthanc's index, as PACS answer it, not by reading every
# matching file (Orthanc's default, "Always"): about 8 ms of CPU less per C-FIND
ORTHANC_INDEX_ONLY = {"StorageAccessOnFind": "Never"}
ALL = None
# study index -> {server index: the study's series indices it holds (ALL: every one)}
LAYOUT: dict[int, dict[int, list[int] | None]] = {
    0: {0: ALL, 4: ALL},
    1: {0: ALL},
    2: {1: ALL, 5: ALL, 7: ALL},
    3: {1: ALL, 0: ALL},
    4: {2: ALL, 6: ALL},
    5: {2: ALL, 3: [0]},
    6: {3: ALL},
    7: {4: ALL, 0: ALL},
    8: {5: ALL, 1: [0]},
    9: {6: ALL},
    10: {7: ALL, 3: ALL},
    11: {7: ALL, 6: ALL, 2: ALL},
}
CONFLICT_STUDY = 4  # its PatientName on server 6 is CONFLICT_NAME instead
CONFLICT_NAME = "MULLER^ANNA"
PATIENTS = [("SPAN-P1", "MUELLER^ANNA"), ("SPAN-P2", "DOE^JOHN"), ("SPAN-P3", "ROE^JANE")]


def series_count(study_index: int) -> int:
    return 1 + study_index % 3


def source_id(server: int) -> str:
    return f"pacs-{server + 1}"


class DelayProxy:
    """A TCP proxy in front of some ports of one host: every chunk read from either side
    is written to the other ``delay`` seconds after it arrived (a latency, not a
    bandwidth limit: chunks in flight overlap). Runs its own event loop in a thread.
    Records what clients sent (``client_bytes``), to check e.g. that a C-CANCEL left, and
    when each connection came (``opened``)."""

    def __init__(self, targets: dict[str, int], host: str = "127.0.0.1"):
        self.host = host
        self.targets = targets
        self.ports = {name: free_port() for name in targets}
        self.delay = 0.0
        self.client_bytes = {name: bytearray() for name in targets}
        self.open_connections = 0
        self.opened: list[tuple[str, float]] = []  # (target name, time.monotonic()) per connection accepted
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def start(self) -> "DelayProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        for name, target in self.targets.items():
            server = await asyncio.start_server(lambda r, w, n=name, t=target: self._serve(n, t, r, w),
                                                self.host, self.ports[name])
            self._servers.append(server)

    async def _serve(self, name: str, target: int, client_r, client_w) -> None:
        self.opened.append((name, time.monotonic()))
        self.open_connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(self.host, target)
        except OSError:
            self.open_connections -= 1
            client_w.close()
            return
        try:
            await asyncio.gather(self._pump(client_r, up_w, self.client_bytes[name]), self._pump(up_r, client_w, None))
        finally:
            self.open_connections -= 1
            for w in (client_w, up_w):
                w.close()

    async def _pump(self, reader, writer, record: bytearray | None) -> None:
        due: asyncio.Queue = asyncio.Queue()

        async def forward():
            while (item := await due.get()) is not None:
                at, chunk = item
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(forward())
        try:
            while chunk := await reader.read(65536):
                if record is not None:
                    record.extend(chunk)
                due.put_nowait((time.monotonic() + self.delay, chunk))
        except (ConnectionError, OSError):
            pass
        due.put_nowait(None)
        try:
            await sender
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close():  # the connections' tasks end too, before their loop does
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class SpannerBed:
    """What the tests get. ``sources``: the eight source configs as they appear in the
    ``sources`` list (dicts); ``truth[source_id]``: study UID -> the number of that
    study's series held there; ``studies[uid]``: {"index", "patient_id", "patient_name",
    "series"} (the study's full series list; PatientName as on every server but the
    conflicting one); ``names[source_id][uid]``: PatientName as that server holds it;
    ``down``: sources at a closed port (one dicomweb_poller, one dimse_poller);
    ``slow``: the slow source (C-FIND through the proxy); ``slow_dicomweb``: the same
    server by QIDO-RS through the proxy (not in ``sources``); ``set_delay(s)``: the
    proxy's delay; ``proxy``: the DelayProxy; ``orthancs[source_id]``: the servers."""

    sources: list[dict]
    truth: dict[str, dict[str, int]]
    studies: dict[str, dict]
    names: dict[str, dict[str, str]]
    down: list[dict]
    slow: dict
    slow_dicomweb: dict
    proxy: DelayProxy
    orthancs: dict[str, Orthanc] = field(repr=False)
    conflict_study: str = ""

    def set_delay(self, seconds: float) -> None:
        self.proxy.set_delay(seconds)

    def source(self, source_id: str) -> dict:
        return next(s for s in [*self.sources, *self.down, self.slow_dicomweb] if s["id"] == source_id)


def _instance(template, *, study: str, series: str, series_number: int, patient: tuple[str, str],
              study_index: int) -> bytes:
    ds = template.copy()
    ds.file_meta = template.file_meta.copy()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientID, ds.PatientName = patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate = f"202401{study_index + 1:02d}"
    ds.AccessionNumber = f"SPAN{study_index:04d}"
    ds.StudyDescription = f"Spanner study {study_index}"
    ds.SeriesNumber, ds.InstanceNumber = series_number, 1
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = os.urandom(8 * 8 * 2)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _dicomweb(sid: str, url: str, page_size: int = 100) -> dict:
    return {"id": sid, "type": "dicomweb_poller", "enabled": False, "url": url, "page_size": page_size,
            "timeout_s": 30}


def _dimse(sid: str, ae_title: str, port: int) -> dict:
    return {"id": sid, "type": "dimse_poller", "enabled": False, "ae_title": ae_title, "host": "127.0.0.1",
            "port": port, "calling_ae": "AXIOM", "timeout_s": 30}


def build_bed(workdir: Path, stoppables: list) -> SpannerBed:
    """Start and load the bed; what was started is appended to ``stoppables`` at once."""
    orthancs = []
    for i in range(SERVERS):
        orthancs.append(Orthanc(workdir / source_id(i), ae_title=f"SPAN{i + 1}", extra=ORTHANC_INDEX_ONLY))
        stoppables.append(orthancs[-1])
        orthancs[-1].start()
    slow = orthancs[SLOW_SERVER]
    proxy = DelayProxy({"dicom": slow.dicom_port, "http": slow.http_port})
    stoppables.append(proxy)
    proxy.start()

    template = dcmread(get_testdata_file("CT_small.dcm"))
    truth: dict[str, dict[str, int]] = {source_id(i): {} for i in range(SERVERS)}
    names: dict[str, dict[str, str]] = {source_id(i): {} for i in range(SERVERS)}
    studies: dict[str, dict] = {}
    uploads: dict[int, list[bytes]] = {i: [] for i in range(SERVERS)}
    conflict_uid = ""
    for index, placement in LAYOUT.items():
        study = generate_uid()
        series = [generate_uid() for _ in range(series_count(index))]
        patient = PATIENTS[index % len(PATIENTS)]
        studies[study] = {"index": index, "patient_id": patient[0], "patient_name": patient[1], "series": series}
        if index == CONFLICT_STUDY:
            conflict_uid = study
        for server, held in placement.items():
            name = CONFLICT_NAME if index == CONFLICT_STUDY and server == 6 else patient[1]
            held = range(len(series)) if held is ALL else held
            for n in held:
                uploads[server].append(_instance(template, study=study, series=series[n], series_number=n + 1,
                                                 patient=(patient[0], name), study_index=index))
            truth[source_id(server)][study] = len(held)
            names[source_id(server)][study] = name
    for server, blobs in uploads.items():
        with httpx.Client(base_url=orthancs[server].url, timeout=30) as http:
            for blob in blobs:
                http.post("/instances", content=blob).raise_for_status()

    sources = []
    for i, o in enumerate(orthancs):
        if i == SLOW_SERVER:
            sources.append(_dimse(source_id(i), o.ae_title, proxy.ports["dicom"]))
        elif i in QIDO_SERVERS:
            sources.append(_dicomweb(source_id(i), o.dicomweb))
        else:
            sources.append(_dimse(source_id(i), o.ae_title, o.dicom_port))
    closed = free_port()  # nothing listens there: connections are refused
    down = [_dicomweb("down-web", f"http://127.0.0.1:{closed}/dicom-web"), _dimse("down-dimse", "DOWN", closed)]
    bed = SpannerBed(
        sources=sources, truth=truth, studies=studies, names=names, down=down, slow=sources[SLOW_SERVER],
        slow_dicomweb=_dicomweb(f"{source_id(SLOW_SERVER)}-web", f"http://127.0.0.1:{proxy.ports['http']}/dicom-web"),
        proxy=proxy, orthancs={source_id(i): o for i, o in enumerate(orthancs)}, conflict_study=conflict_uid)
    return bed


@pytest.fixture(scope="session")
def spanner_bed(tmp_path_factory):
    stoppables: list = []
    try:
        yield build_bed(tmp_path_factory.mktemp("spanner-bed"), stoppables)
    finally:
        # side by side: an Orthanc may take seconds to shut down
        with ThreadPoolExecutor(len(stoppables) or 1) as pool:
            list(pool.map(lambda thing: thing.stop(), stoppables))
