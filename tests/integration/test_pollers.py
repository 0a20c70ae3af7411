"""Pollers against Orthanc as a real PACS: QIDO-RS/WADO-RS and C-FIND/C-MOVE/C-GET into
an in-process embedded runtime that delivers to a folder.

Exactly-once is checked where it would show: the ingest bucket keeps one object per
ingest (each under its own uuid name), so an instance ingested twice appears twice
there even though the filesystem destination would overwrite the same path. Pixel
data and transfer syntax are compared with the files uploaded to Orthanc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from shared.adapters.secrets import LocalSecrets
from shared.config import parse_config
from shared.inputs.ingest import Ingestor
from shared.inputs.pollers import poll_source, source_status
from shared.inputs.pollers.scheduler import SourceScheduler
from shared.messages import TOPIC_INGEST, BlobRef
from shared.runtime.local import EmbeddedRuntime
from tests.support.dicomgen import make_ct_study
from tests.support.orthanc import Orthanc
from tests.support.procs import DCMTK_ENV, free_port, require, wait_for

pytestmark = pytest.mark.dcmtk

# pydicom samples in other transfer syntaxes (each gets new UIDs with dcmodify, which
# keeps the transfer syntax and the encoded pixel data)
TS_SAMPLES = ["MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
              "image_dfl.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm"]
GATEWAY_AE = "AXIOM"
POLLER_AE = "AXIOMPOLL"


@pytest.fixture(scope="module")
def gateway_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, gateway_port):
    with Orthanc(tmp_path_factory.mktemp("orthanc"), modalities={"axiom": (GATEWAY_AE, "127.0.0.1", gateway_port)}) as o:
        yield o


def dcmodify(path: Path, *assignments: str) -> None:
    args = [require("dcmodify"), "-nb", "-gin"]
    for a in assignments:
        args += ["-i", a]
    subprocess.run([*args, str(path)], check=True, env=DCMTK_ENV, capture_output=True)


def make_study(folder: Path, patient_id: str, study_date: str, *, ct: int = 0, samples: list[str] = (),
               study_uid: str | None = None, series_uid: str | None = None) -> list[Path]:
    """``ct`` generated CT instances (256x256) and copies of ``samples``, all in one study."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    paths = []
    if ct:
        for p in make_ct_study(folder / f"ct-{generate_uid()[-8:]}", ct, rows=256, columns=256, patient_id=patient_id):
            dcmodify(p, f"(0020,000D)={study_uid}", f"(0008,0020)={study_date}",
                     *([f"(0020,000E)={series_uid}"] if series_uid else []))
            paths.append(p)
    for name in samples:
        p = folder / f"{Path(name).stem}-{generate_uid()[-8:]}.dcm"
        shutil.copy(get_testdata_file(name), p)
        dcmodify(p, f"(0010,0020)={patient_id}", f"(0020,000D)={study_uid}", f"(0008,0020)={study_date}",
                 f"(0020,000E)={generate_uid()}")
        paths.append(p)
    return paths


def upload(orthanc: Orthanc, paths: list[Path]) -> dict[str, Path]:
    by_uid = {}
    for p in paths:
        assert orthanc.upload(p)["Status"] == "Success", p
        by_uid[str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p
    return by_uid


def runtime_config(gateway_port: int, sources: list[dict]) -> dict:
    return {
        "listeners": [{"id": "main", "ae_title": GATEWAY_AE, "host": "127.0.0.1", "port": gateway_port}],
        "destinations": [{"id": "out", "type": "filesystem", "path": "out"}],
        "default_route": {"destinations": ["out"]},
        "sources": sources,
    }


@pytest.fixture
def make_runtime(tmp_path, gateway_port):
    runtimes = []

    def make(sources: list[dict]) -> EmbeddedRuntime:
        # the tests poll by hand; the scheduler has its own test
        rt = EmbeddedRuntime(parse_config(runtime_config(gateway_port, sources)), tmp_path / "data", http_port=None,
                             poll_sources=False)
        rt.start()
        runtimes.append(rt)
        return rt

    yield make
    for rt in runtimes:
        rt.stop()


def ingestor(rt: EmbeddedRuntime) -> Ingestor:
    return Ingestor(rt.blobs, rt.config().settings.ingest_bucket)


def poll(rt: EmbeddedRuntime, source_id: str):
    source = next(s for s in rt.config().sources if s.id == source_id)
    return poll_source(source, ingestor=ingestor(rt), docs=rt.docs, secrets=LocalSecrets(), tmp_dir=rt.data_dir / "tmp")


def ingested(rt: EmbeddedRuntime) -> dict[str, list[dict]]:
    """SOP Instance UID -> the ingest metadata of every ingest of it."""
    bucket = rt.config().settings.ingest_bucket
    out: dict[str, list[dict]] = {}
    for name in rt.blobs.list(bucket):
        meta = rt.blobs.metadata(BlobRef(bucket=bucket, name=name))
        out.setdefault(meta["axiom-sop_instance_uid"], []).append(meta)
    return out


def delivered(rt: EmbeddedRuntime) -> dict[str, Path]:
    root = rt.data_dir / "out"
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in root.rglob("*.dcm")} if root.exists() else {}


def wait_delivered(rt: EmbeddedRuntime, count: int) -> dict[str, Path]:
    wait_for(lambda: len(delivered(rt)) >= count and not any(
        rt.queue.pending(t) for t in (TOPIC_INGEST, "planned", "deliver")), 60, interval=0.1,
        what=f"{count} instances delivered")
    return delivered(rt)


def assert_exactly_once(rt: EmbeddedRuntime, sources: dict[str, Path], *, source_type: str | None = None,
                        source_id: str | None = None) -> None:
    """Every instance of ``sources`` ingested once (by ``source_id`` when given, other
    sources' ingests aside), nothing else, and delivered byte for byte."""
    got = ingested(rt)
    if source_id:
        got = {uid: [m for m in v if m["axiom-source_id"] == source_id] for uid, v in got.items()}
        got = {uid: v for uid, v in got.items() if v}
    assert set(got) == set(sources), "every instance ingested, nothing else"
    twice = {uid: len(v) for uid, v in got.items() if len(v) != 1}
    assert not twice, f"ingested more than once: {twice}"
    if source_type:
        assert {m[0]["axiom-source_type"] for m in got.values()} == {source_type}
    out = wait_delivered(rt, len(sources))
    assert set(out) == set(sources)
    for uid, src_path in sources.items():
        src, dst = dcmread(src_path), dcmread(out[uid])
        assert dst.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID, src_path.name
        assert dst.PixelData == src.PixelData, f"{src_path.name}: pixel data must arrive byte for byte"
    assert not rt.docs.list("exceptions")


# --- DICOMweb ------------------------------------------------------------------------


def test_dicomweb_poll_exactly_once_then_only_new(tmp_path, orthanc, make_runtime):
    pid = "AXF-POLL-WEB"
    first = upload(orthanc, make_study(tmp_path / "a", pid, "20240105", ct=10))
    first_series = dcmread(next(iter(first.values())), stop_before_pixels=True)
    first |= upload(orthanc, make_study(tmp_path / "b", pid, "20240110", samples=TS_SAMPLES))
    # a study of another patient the query must not return
    upload(orthanc, make_study(tmp_path / "other", "AXF-NOT-ME", "20240111", ct=1))

    rt = make_runtime([{"id": "web", "type": "dicomweb_poller", "url": orthanc.dicomweb,
                        "query": {"PatientID": pid}, "page_size": 1, "interval_s": 3600}])
    r = poll(rt, "web")
    assert r.errors == [] and (r.studies_seen, r.found, r.queued, r.retrieved, r.failed) == (2, 2, 17, 17, 0)
    assert r.watermark == "20240110"
    assert_exactly_once(rt, first, source_type="dicomweb_poller")
    assert {m[0]["axiom-source_id"] for m in ingested(rt).values()} == {"web"}

    # nothing new: the same studies come back (inclusive watermark, 7-day lookback) and
    # are skipped without even listing their instances
    r = poll(rt, "web")
    assert (r.studies_seen, r.found, r.queued, r.retrieved, r.already_had, r.failed) == (2, 0, 0, 0, 0, 0), r
    assert_exactly_once(rt, first)

    # two more instances arriving in the newest study (returned again by the inclusive
    # date-bounded query), plus a new study
    more = upload(orthanc, make_study(tmp_path / "c", pid, "20240110", ct=2,
                                      study_uid=str(dcmread(first[next(reversed(first))]).StudyInstanceUID)))
    newer = upload(orthanc, make_study(tmp_path / "d", pid, "20240201", ct=3))
    r = poll(rt, "web")
    assert r.errors == [] and (r.found, r.queued, r.retrieved, r.failed) == (2, 5, 5, 0), r
    assert r.already_had == len(TS_SAMPLES), "the grown study's earlier instances are not retrieved again"
    assert r.watermark == "20240201"
    assert_exactly_once(rt, first | more | newer)

    status = source_status(rt.docs, ["web"])["web"]
    assert status["counters"] == {"found": 4, "queued": 22, "retrieved": 22, "already_had": 7, "failed": 0}
    assert status["last_error"] is None and status["runs"] == 3 and status["watermark"] == "20240201"
    assert first_series.StudyInstanceUID  # the first study stays fully retrieved


def test_dicomweb_errors_are_counted_and_recorded(tmp_path, make_runtime):
    rt = make_runtime([{"id": "down", "type": "dicomweb_poller", "url": f"http://127.0.0.1:{free_port()}/dicom-web",
                        "timeout_s": 2}])
    r = poll(rt, "down")
    assert r.errors and r.errors[0].startswith("query: ConnectError")
    status = source_status(rt.docs, ["down"])["down"]
    assert "ConnectError" in status["last_error"] and status["last_success"] is None and status["runs"] == 1


def test_scheduler_polls_on_its_timer(tmp_path, orthanc, make_runtime):
    pid = "AXF-POLL-SCHED"
    files = upload(orthanc, make_study(tmp_path / "s", pid, "20240301", ct=3))
    rt = make_runtime([{"id": "timed", "type": "dicomweb_poller", "url": orthanc.dicomweb,
                        "query": {"PatientID": pid}, "interval_s": 1}])
    sched = SourceScheduler(rt.config, ingestor(rt), rt.docs, LocalSecrets(), tmp_dir=rt.data_dir / "tmp", tick_s=0.1)
    sched.start()
    try:
        wait_for(lambda: sched.status()["timed"]["runs"] >= 3, 20, interval=0.1, what="three timed runs")
        late = upload(orthanc, make_study(tmp_path / "t", pid, "20240302", ct=1))
        wait_for(lambda: sched.status()["timed"]["counters"]["retrieved"] >= 4, 20, interval=0.1,
                 what="the new study")
        status = sched.status()["timed"]
    finally:
        sched.stop()
    assert status["counters"]["retrieved"] == 4 and status["counters"]["failed"] == 0
    assert status["last_error"] is None and status["enabled"] is True
    assert_exactly_once(rt, files | late, source_type="dicomweb_poller")


# --- DIMSE ---------------------------------------------------------------------------


def dimse_source(orthanc: Orthanc, pid: str, retrieve: str) -> dict:
    return {"id": f"pacs-{retrieve}", "type": "dimse_poller", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
            "port": orthanc.dicom_port, "calling_ae": POLLER_AE, "query": {"PatientID": pid},
            "retrieve": retrieve, "move_destination": GATEWAY_AE, "timeout_s": 20, "interval_s": 3600}


@pytest.mark.parametrize("retrieve", ["move", "get"])
def test_dimse_poll_exactly_once_then_only_new(tmp_path, orthanc, make_runtime, retrieve):
    pid = f"AXF-POLL-{retrieve.upper()}"
    series = generate_uid()
    first = upload(orthanc, make_study(tmp_path / "a", pid, "20230605", ct=10, series_uid=series))
    first |= upload(orthanc, make_study(tmp_path / "b", pid, "20230601", samples=TS_SAMPLES[:4]))
    rt = make_runtime([dimse_source(orthanc, pid, retrieve)])
    sid = f"pacs-{retrieve}"

    r = poll(rt, sid)
    assert r.errors == [] and (r.studies_seen, r.found, r.queued, r.retrieved, r.failed) == (2, 2, 14, 14, 0), r
    assert r.watermark == "20230605"
    # C-MOVE instances come in through the gateway (C-STOREs from Orthanc carrying our
    # Move Originator AE); C-GET instances are ingested by the poller itself
    assert_exactly_once(rt, first, source_type="dimse_poller")  # C-MOVE arrivals are labelled by Move Originator
    if retrieve == "move":
        assert {m[0]["axiom-calling_ae"] for m in ingested(rt).values()} == {orthanc.ae_title}

    r = poll(rt, sid)
    assert (r.found, r.queued, r.retrieved, r.failed) == (0, 0, 0, 0), r

    # two new instances in an existing series (IMAGE-level retrieval of just those)
    # and a new study (STUDY level)
    study_a = str(dcmread(next(iter(first.values())), stop_before_pixels=True).StudyInstanceUID)
    more = upload(orthanc, make_study(tmp_path / "c", pid, "20230605", ct=2, study_uid=study_a, series_uid=series))
    newer = upload(orthanc, make_study(tmp_path / "d", pid, "20230701", ct=2))
    r = poll(rt, sid)
    assert r.errors == [] and (r.found, r.queued, r.retrieved, r.already_had, r.failed) == (2, 4, 4, 10, 0), r
    assert_exactly_once(rt, first | more | newer)
    assert source_status(rt.docs, [sid])[sid]["counters"] == {"found": 4, "queued": 18, "retrieved": 18,
                                                              "already_had": 10, "failed": 0}


def test_dimse_move_to_unknown_destination_fails_and_retries(tmp_path, orthanc, make_runtime):
    pid = "AXF-POLL-BADMOVE"
    files = upload(orthanc, make_study(tmp_path / "a", pid, "20230801", ct=2))
    source = dimse_source(orthanc, pid, "move") | {"move_destination": "NOBODY"}
    rt = make_runtime([source])
    r = poll(rt, "pacs-move")
    assert (r.queued, r.retrieved, r.failed) == (2, 0, 2) and r.errors
    assert "C-MOVE status 0x" in r.errors[0]
    assert not ingested(rt)
    state = source_status(rt.docs, ["pacs-move"])["pacs-move"]
    assert state["last_error"] and state["watermark"] == "20230801"  # not past the unfinished study

    # fixed: the next run retrieves exactly what is missing
    rt.docs.set("sources", "pacs-move", dimse_source(orthanc, pid, "move"))
    rt.config.invalidate()
    r = poll(rt, "pacs-move")
    assert (r.queued, r.retrieved, r.failed) == (2, 2, 0) and not r.errors, r
    assert_exactly_once(rt, files)


# --- studies dated before the watermark ------------------------------------------------


def late_arrival_sources(orthanc: Orthanc, pid: str, kind: str) -> tuple[dict, dict]:
    """(before, after): the same peer and query, ``before`` as pollers were before the
    lookback window and the change log (lookback 0, date-bounded query only)."""
    if kind == "dicomweb":
        base = {"type": "dicomweb_poller", "url": orthanc.dicomweb, "query": {"PatientID": pid}, "interval_s": 3600}
        before, after = base | {"id": "web-before"}, base | {"id": "web-after"}
    else:
        before = dimse_source(orthanc, pid, kind) | {"id": f"{kind}-before", "calling_ae": "AXIOMOLD"}
        after = dimse_source(orthanc, pid, kind) | {"id": f"{kind}-after"}
    return before | {"lookback_days": 0}, after | {"orthanc_changes": {"url": orthanc.url}}


def ingests_by(rt: EmbeddedRuntime, source_id: str) -> dict[str, int]:
    """SOP Instance UID -> how many times ``source_id`` ingested it."""
    return {uid: n for uid, metas in ingested(rt).items()
            if (n := sum(m["axiom-source_id"] == source_id for m in metas))}


def counts(r) -> tuple:
    return r.found, r.queued, r.retrieved, r.already_had, r.failed


@pytest.mark.parametrize("kind", ["dicomweb", "move", "get"])
def test_studies_dated_before_the_watermark_are_found(tmp_path, orthanc, make_runtime, kind):
    """Issue 10.13: instances that reach the peer after a run, in studies dated before
    the watermark, were never ingested. Reproduced with the old behaviour (``before``),
    then every instance ingested exactly once by the lookback window (a study a few days
    old) and Orthanc's change log (a months-old study growing, a years-old study
    arriving)."""
    pid = f"AXF-LATE-{kind.upper()}"
    old_series, near_series = generate_uid(), generate_uid()
    old = upload(orthanc, make_study(tmp_path / "old", pid, "20240101", ct=3, series_uid=old_series))
    near = upload(orthanc, make_study(tmp_path / "near", pid, "20240227", ct=2, series_uid=near_series))
    newest = upload(orthanc, make_study(tmp_path / "new", pid, "20240301", ct=2))
    before, after = late_arrival_sources(orthanc, pid, kind)
    rt = make_runtime([before, after])
    for source in (before, after):
        r = poll(rt, source["id"])
        assert r.errors == [] and counts(r) == (3, 7, 7, 0, 0) and r.watermark == "20240301", r
    def study_of(files):
        return str(dcmread(next(iter(files.values())), stop_before_pixels=True).StudyInstanceUID)

    # after the runs: an instance for the study of 4 days before the watermark, one for
    # the study of two months before, a study from 2019, and one of another patient
    late = upload(orthanc, make_study(tmp_path / "late-near", pid, "20240227", ct=1, study_uid=study_of(near),
                                      series_uid=near_series))
    late |= upload(orthanc, make_study(tmp_path / "late-old", pid, "20240101", ct=1, study_uid=study_of(old),
                                       series_uid=old_series))
    late |= upload(orthanc, make_study(tmp_path / "2019", pid, "20190615", ct=2))
    upload(orthanc, make_study(tmp_path / "not-me", "AXF-LATE-NOT-ME", "20190615", ct=1))
    everything = old | near | newest | late

    # the miss: a date-bounded query from the watermark sees none of them, run after run
    for _ in range(2):
        r = poll(rt, before["id"])
        assert r.errors == [] and counts(r) == (0, 0, 0, 0, 0), r
    assert ingests_by(rt, before["id"]) == dict.fromkeys(old | near | newest, 1)

    # fixed: the study in the lookback window (grown: listed, 2 already had, 1 new), the
    # two studies from the change log (3 already had, 1 new; 2 new), nothing else
    r = poll(rt, after["id"])
    assert r.errors == [] and counts(r) == (3, 4, 4, 5, 0), r
    assert r.watermark == "20240301", "studies found by UID do not move the watermark"
    assert ingests_by(rt, after["id"]) == dict.fromkeys(everything, 1)

    # and once only: the next run finds nothing to do
    r = poll(rt, after["id"])
    assert r.errors == [] and counts(r) == (0, 0, 0, 0, 0), r
    assert ingests_by(rt, after["id"]) == dict.fromkeys(everything, 1)
    assert_exactly_once(rt, everything, source_type="dimse_poller" if kind != "dicomweb" else "dicomweb_poller",
                        source_id=after["id"])
    status = source_status(rt.docs, [after["id"]])[after["id"]]
    assert status["counters"] == {"found": 6, "queued": 11, "retrieved": 11, "already_had": 5, "failed": 0}
    assert status["changes_seq"] > 0 and status["last_error"] is None


def test_an_unfinished_study_outside_the_window_is_retried_by_uid(tmp_path, orthanc, make_runtime):
    """A study found through the change log whose retrieval fails is not lost when the
    change log moves on: it is asked for by UID on the next runs until done."""
    pid = "AXF-LATE-RETRY"
    recent = upload(orthanc, make_study(tmp_path / "a", pid, "20240301", ct=1))
    source = dimse_source(orthanc, pid, "move") | {"id": "retry", "orthanc_changes": {"url": orthanc.url}}
    rt = make_runtime([source])
    r = poll(rt, "retry")
    assert (r.queued, r.retrieved, r.failed) == (1, 1, 0), r

    # a 2015 study arrives while C-MOVE is broken (an unknown destination)
    old = upload(orthanc, make_study(tmp_path / "b", pid, "20150101", ct=2))
    rt.docs.set("sources", "retry", source | {"move_destination": "NOBODY"})
    rt.config.invalidate()
    r = poll(rt, "retry")  # found by the change log, not retrieved
    assert (r.found, r.queued, r.retrieved, r.failed) == (1, 2, 0, 2) and r.errors, r
    assert source_status(rt.docs, ["retry"])["retry"]["watermark"] == "20240301"

    rt.docs.set("sources", "retry", source)
    rt.config.invalidate()
    r = poll(rt, "retry")  # no change since; the unfinished 2015 study is asked for by UID
    assert r.errors == [] and (r.found, r.queued, r.retrieved, r.failed) == (1, 2, 2, 0), r
    r = poll(rt, "retry")
    assert (r.found, r.queued, r.retrieved, r.failed) == (0, 0, 0, 0), r
    assert_exactly_once(rt, recent | old, source_type="dimse_poller")
