"""Route benchmark: receive by C-STORE, set 3 tags, forward by C-STORE to a dcmtk
``storescp``; ``axiom-flow serve`` versus Orthanc (Debian) as a Lua router, same run.

    .venv/bin/python bench/route.py [--count 500] [--repeat 3]

Data: ``--count`` CT instances (512 x 512 16-bit, about 530 KB, Explicit VR LE) are
generated once. Every run gets a fresh ``storescp`` (tests/support/procs.StoreSCP:
``+B`` bit-preserving, ``+uf`` unique file names, ``--fork`` for concurrent
associations) and a fresh router, and ``sync`` runs before each timed send.

* axiom-flow: ``axiom-flow serve`` with one rule: three ``set`` actions (StationName,
  InstitutionName, InstitutionalDepartmentName), then a ``cstore`` destination pointing
  at the storescp (``max_concurrency`` from ``--concurrency``, 4 by default).
* Orthanc: ``Orthanc`` with ``"LuaScripts": [route.lua]``, ``"OverwriteInstances": true``,
  ``"MaximumPduLength": 131072`` and the storescp in ``DicomModalities``. The Lua
  ``OnStoredInstance`` pushes a ``modify`` job step that sets the same three tags and
  keeps the SOP Instance UID, then ``Delete(SendToModality('', 'dest'))`` (recipe from
  ../shared/TESTBED.md); instances stored by the Lua job itself are skipped.

Both routers get every instance from one ``storescu`` process on one association. The
time of a run is from spawning ``storescu`` until every instance is on disk at the
storescp and the router says it is done with it: axiom-flow's ``/api/v1/status`` shows no
pending message and ``--count`` deliveries delivered; Orthanc has no instance left
(it deletes each one only after the storescp answered its C-STORE). Both are polled
every 0.05 s once storescp holds ``--count`` files. Because a destination answers only
after it has written the file, every file is complete at that point.

A direct ``storescu -> storescp`` run (no router) is timed too, for information. Each
router run also prints the CPU seconds the router used (all its processes, from
/proc): Orthanc's rate follows its CPU use, which is bimodal (see
bench/results/route.md).

Nothing is deleted between runs; the work dir goes at the end (about 4 GB at the
defaults; the script checks for the space first). On an ext4 filesystem without a
journal, ext4 skips every recently deleted inode when it allocates a new one, so a run that followed
the deletion of the previous run's thousands of files paid for them: creating a file
took about 100 us on a quiet disk and 600-860 us after a few runs.

Correctness, checked on every run (the script exits non-zero on a failure): every
instance answered Success to storescu; storescp holds exactly ``--count`` files (a
duplicate would show as an extra file); their SOP Instance UIDs are the set sent; the
three tags have the new values; Pixel Data is byte-identical to the source instance.

The figure per router is the MEDIAN over ``--repeat`` runs (best printed too); runs
alternate direct / axiom-flow / Orthanc so drift hits all alike. Each run's own ratio (axiom-flow
against the Orthanc run right after it) is printed too, for information. The last printed line
is ``route_ratio_vs_orthanc=<axiom inst/s / Orthanc inst/s>`` (goal: >= 8).
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from pydicom import dcmread  # noqa: E402

from bench.ingest import (  # noqa: E402
    _dcmtk_version,
    _git_describe,
    bench_arguments,
    bench_workdir,
    check_storescu,
    cpu_seconds,
    parse_bench_arguments,
    print_load_average,
    require_free_space,
)
from tests.support.dicomgen import make_ct_study  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.procs import AxiomServer, StoreSCP, free_port, storescu  # noqa: E402

MAX_PDU = 131072
NEW_TAGS = {
    "StationName": "AXROUTE01",
    "InstitutionName": "AXIOM ROUTE BENCH",
    "InstitutionalDepartmentName": "RADIOLOGY ROUTED",
}
POLL_S = 0.05

ROUTE_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RequestOrigin'] ~= 'Lua' then
    table.insert(_job, {Operation='modify', Resource=instanceId,
                        Replace={%s},
                        Remove={}, Keep={'SOPInstanceUID'}, Force=true})
    Delete(SendToModality('', 'dest'))
  end
end
""" % ", ".join(f"{k}='{v}'" for k, v in NEW_TAGS.items())

FORWARD_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  Delete(SendToModality(instanceId, 'dest'))
end
"""


class Source:
    """The generated instances and what the destination must end up with."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.pixel_sha: dict[str, str] = {}
        for p in files:
            ds = dcmread(p)
            self.pixel_sha[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
        self.total_bytes = sum(p.stat().st_size for p in files)

    @property
    def count(self) -> int:
        return len(self.files)


def verify_destination(scp: StoreSCP, src: Source, label: str, *, tags: dict[str, str] | None) -> None:
    """Every file at the storescp: the sent SOP Instance UIDs exactly once each, the new
    tag values, Pixel Data bytes equal to the source's."""
    files = scp.files()
    problems: list[str] = []
    if len(files) != src.count:
        problems.append(f"{len(files)} files for {src.count} sent")
    seen: set[str] = set()
    for p in files:
        ds = dcmread(p)
        uid = str(ds.SOPInstanceUID)
        if uid in seen:
            problems.append(f"duplicate {uid}")
        seen.add(uid)
        want = src.pixel_sha.get(uid)
        if want is None:
            problems.append(f"unexpected SOP Instance UID {uid} in {p.name}")
            continue
        if hashlib.sha256(ds.PixelData).hexdigest() != want:
            problems.append(f"{uid}: Pixel Data differs from the source")
        for keyword, value in (tags or {}).items():
            if str(ds.get(keyword, "")) != value:
                problems.append(f"{uid}: {keyword}={ds.get(keyword)!r}, expected {value!r}")
        if len(problems) > 20:
            break
    missing = set(src.pixel_sha) - seen
    if missing and len(problems) <= 20:
        problems.append(f"{len(missing)} SOP Instance UIDs never arrived")
    if problems:
        raise SystemExit(f"{label}: destination check failed ({scp.out_dir}):\n  " + "\n  ".join(problems[:20]))
    partial = scp.partial_files()
    if partial:  # an aborted transfer the router then retried: not a delivery, but worth seeing
        print(f"    note: {label}: {len(partial)} partial file(s) at storescp (aborted transfers)", flush=True)


def _poll(done, timeout: float, what: str) -> float:
    """Poll ``done()`` every POLL_S; returns perf_counter() when it first holds."""
    deadline = time.perf_counter() + timeout
    while True:
        if done():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_S)


def _count_files(d: Path) -> int:
    with os.scandir(d) as it:
        return sum(1 for e in it if e.is_file())


def run_direct(work: Path, src: Source, run: int) -> dict:
    scp = StoreSCP(work / f"direct-{run}")
    try:
        scp.start()
        os.sync()
        t0 = time.perf_counter()
        proc = storescu(scp.port, src.files, called_ae=scp.ae_title, extra=["--max-pdu", str(MAX_PDU)], check=False)
        elapsed = time.perf_counter() - t0
    finally:
        scp.stop()
    check_storescu(proc, src.count, "direct")
    verify_destination(scp, src, "direct", tags=None)
    return {"s": elapsed}


def axiom_config(port: int, scp: StoreSCP, concurrency: int) -> dict:
    return {
        "listeners": [{"id": "main", "ae_title": "AXIOM", "host": "127.0.0.1", "port": port, "max_pdu": MAX_PDU}],
        "destinations": [{"id": "scp", "type": "cstore", "ae_title": scp.ae_title, "host": "127.0.0.1",
                          "port": scp.port, "max_pdu": MAX_PDU, "max_concurrency": concurrency}],
        "rulesets": [{"id": "bench", "rules": [{
            "id": "route",
            "actions": [{"action": "set", "tag": k, "value": v} for k, v in NEW_TAGS.items()],
            "destinations": ["scp"],
        }]}],
    }


def run_axiom(work: Path, src: Source, run: int, concurrency: int, timeout: float,
              on_started=None, pipeline_processes: int | None = None, route_processes: int | None = None) -> dict:
    scp = StoreSCP(work / f"axiom-{run}-storescp")
    data_dir = work / f"axiom-{run}"
    server = None
    try:
        scp.start()
        port = free_port()
        env = {name: str(value) for name, value in (("AXIOM_PIPELINE_PROCESSES", pipeline_processes),
                                                    ("AXIOM_ROUTE_PROCESSES", route_processes)) if value is not None}
        server = AxiomServer(data_dir, axiom_config(port, scp, concurrency), dicom_port=port, env=env)
        server.start()
        if on_started:
            on_started(server)
        os.sync()
        cpu0 = cpu_seconds(server.proc.pid)
        t0 = time.perf_counter()
        proc = storescu(port, src.files, called_ae="AXIOM", extra=["--max-pdu", str(MAX_PDU)], check=False)
        t_ingest = time.perf_counter()
        check_storescu(proc, src.count, "axiom-flow")
        status: dict = {}

        def done() -> bool:
            nonlocal status
            if _count_files(scp.out_dir) < src.count:
                return False
            status = server.status()
            return not any(status["queue"].values())

        t_end = _poll(done, timeout, "axiom-flow to deliver everything")
        cpu = cpu_seconds(server.proc.pid) - cpu0
    finally:
        if server:
            server.stop()
        scp.stop()
    deliveries = status.get("deliveries", {})
    if deliveries.get("delivered") != src.count or status.get("exceptions"):
        raise SystemExit(f"axiom-flow run {run}: status {status} (log: {server.log_path})")
    verify_destination(scp, src, f"axiom-flow run {run}", tags=NEW_TAGS)
    return {"s": t_end - t0, "ingest_s": t_ingest - t0, "cpu_s": cpu}


def run_orthanc(work: Path, src: Source, run: int, timeout: float, *, lua: str = ROUTE_LUA,
                label: str = "orthanc") -> dict:
    scp = StoreSCP(work / f"{label}-{run}-storescp")
    owork = work / f"{label}-{run}"
    owork.mkdir(parents=True, exist_ok=True)
    script = owork / "route.lua"
    script.write_text(lua)
    orthanc = Orthanc(owork, modalities={"dest": (scp.ae_title, "127.0.0.1", scp.port)},
                      extra={"LuaScripts": [str(script)], "OverwriteInstances": True, "MaximumPduLength": MAX_PDU})
    client = httpx.Client(base_url=orthanc.url, timeout=10)
    try:
        scp.start()
        orthanc.start()
        os.sync()
        cpu0 = cpu_seconds(orthanc.proc.pid)
        t0 = time.perf_counter()
        proc = storescu(orthanc.dicom_port, src.files, called_ae=orthanc.ae_title,
                        extra=["--max-pdu", str(MAX_PDU)], check=False)
        t_ingest = time.perf_counter()
        check_storescu(proc, src.count, label)

        def done() -> bool:
            if _count_files(scp.out_dir) < src.count:
                return False
            return client.get("/statistics").json()["CountInstances"] == 0

        try:
            t_end = _poll(done, timeout, f"{label} to forward everything")
            cpu = cpu_seconds(orthanc.proc.pid) - cpu0
        except SystemExit:
            jobs = client.get("/jobs", params={"expand": ""}).json()
            failed = [j for j in jobs if j.get("State") == "Failure"]
            print(f"{label}: {len(failed)} failed jobs; first: {failed[:1]}", file=sys.stderr)
            raise
    finally:
        client.close()
        orthanc.stop()
        scp.stop()
    verify_destination(scp, src, f"{label} run {run}", tags=NEW_TAGS if lua is ROUTE_LUA else None)
    return {"s": t_end - t0, "ingest_s": t_ingest - t0, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = bench_arguments(__doc__, repeat=3, what="router")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="max_concurrency of axiom-flow's cstore destination (default 2: measured faster than 4 "
                         "on 2 cores, each open association costs a polling thread)")
    ap.add_argument("--pipeline-processes", type=int, default=None,
                    help="axiom-flow serve --pipeline-processes (AXIOM_PIPELINE_PROCESSES); default: serve's own")
    ap.add_argument("--route-processes", type=int, default=None,
                    help="axiom-flow serve --route-processes (AXIOM_ROUTE_PROCESSES); default: serve's own")
    ap.add_argument("--orthanc-forward-only", action="store_true",
                    help="also time Orthanc forwarding without the modify step (informative)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take before it fails")
    args = parse_bench_arguments(ap, argv)

    with bench_workdir(args, "axiom-bench-route-") as work:
        t = time.perf_counter()
        src = Source(make_ct_study(work / "input", args.count))
        print(f"generated {src.count} instances, {src.total_bytes / src.count / 1e3:.0f} KB each, "
              f"{src.total_bytes / 1e6:.1f} MB in {time.perf_counter() - t:.1f}s")
        # per repeat: direct 1, axiom-flow 3 (ingest, processed, storescp), Orthanc 1 (+1 forward-only)
        require_free_space(work, src.total_bytes, (5 + args.orthanc_forward_only) * args.repeat)
        print(f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
              f"{platform.system()} {platform.release()}; storescu {_dcmtk_version()}; {_orthanc_version()}")
        print(f"code: {_git_describe()}")
        pp = "serve default" if args.pipeline_processes is None else args.pipeline_processes
        rp = "serve default" if args.route_processes is None else args.route_processes
        print(f"max_pdu={MAX_PDU} axiom cstore max_concurrency={args.concurrency} pipeline_processes={pp} "
              f"route_processes={rp} "
              f"repeat={args.repeat} "
              f"(median reported); load average before: {os.getloadavg()[0]:.2f}")

        runs: dict[str, list[dict]] = {"direct": [], "axiom-flow": [], "orthanc": [], "orthanc-fwd": []}
        for run in range(args.repeat):
            r = run_direct(work, src, run)
            runs["direct"].append(r)
            print(f"  run {run + 1}: direct     {r['s']:6.2f}s {src.count / r['s']:7.1f} inst/s", flush=True)
            r = run_axiom(work, src, run, args.concurrency, args.timeout,
                          pipeline_processes=args.pipeline_processes, route_processes=args.route_processes)
            runs["axiom-flow"].append(r)
            print(f"  run {run + 1}: axiom-flow {r['s']:6.2f}s {src.count / r['s']:7.1f} inst/s"
                  f"  (storescu done after {r['ingest_s']:.2f}s; CPU {r['cpu_s']:.1f}s)", flush=True)
            r = run_orthanc(work, src, run, args.timeout)
            runs["orthanc"].append(r)
            print(f"  run {run + 1}: orthanc    {r['s']:6.2f}s {src.count / r['s']:7.1f} inst/s"
                  f"  (storescu done after {r['ingest_s']:.2f}s; CPU {r['cpu_s']:.1f}s)", flush=True)
            if args.orthanc_forward_only:
                r = run_orthanc(work, src, run, args.timeout, lua=FORWARD_LUA, label="orthanc-fwd")
                runs["orthanc-fwd"].append(r)
                print(f"  run {run + 1}: orthanc forward-only {r['s']:6.2f}s {src.count / r['s']:7.1f} inst/s",
                      flush=True)

        def summary(key: str, label: str) -> float:
            med = statistics.median(r["s"] for r in runs[key])
            best = min(r["s"] for r in runs[key])
            rate = src.count / med
            print(f"{label:<34} {rate:7.1f} inst/s {src.total_bytes / med / 1e6:7.1f} MB/s  "
                  f"(median {med:.2f}s, best {src.count / best:.1f} inst/s)")
            return rate

        n_runs = sum(len(v) for v in runs.values())
        print(f"all {n_runs} runs: {src.count}/{src.count} answered Success; every file at storescp checked "
              f"(SOP Instance UIDs, new tags, Pixel Data bytes)")
        summary("direct", "storescu -> storescp direct (info)")
        ax_rate = summary("axiom-flow", "axiom-flow set 3 tags + forward")
        or_rate = summary("orthanc", "Orthanc Lua modify + forward")
        if runs["orthanc-fwd"]:
            summary("orthanc-fwd", "Orthanc Lua forward only (info)")
        # each run's pair (axiom-flow and Orthanc ran back to back): shows how much of the
        # spread is Orthanc's, whose rate is bimodal from run to run
        paired = [o["s"] / a["s"] for a, o in zip(runs["axiom-flow"], runs["orthanc"])]
        print("ratio per run (informative): " + " ".join(f"{r:.2f}" for r in paired)
              + f"  (median {statistics.median(paired):.2f})")
        print_load_average(busy_above=1.5)
        print(f"route_ratio_vs_orthanc={ax_rate / or_rate:.3f}")
        return 0


def _orthanc_version() -> str:
    try:
        out = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip() if out else "Orthanc ?"
    except (OSError, subprocess.SubprocessError):
        return "Orthanc ?"


if __name__ == "__main__":
    sys.exit(main())
