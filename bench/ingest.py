"""Ingest benchmark: one ``storescu`` association into ``axiom-flow serve`` versus dcmtk
``storescp`` on the same machine, in the same run.

    .venv/bin/python bench/ingest.py [--count 500] [--repeat 3] [--max-pdu 131072]

What is measured, per run (each run uses a fresh receiver and a fresh output dir):

* ingest time: wall clock of one ``storescu`` process sending every instance on one
  association, from spawn to exit. ``storescu`` exits after the last C-STORE response,
  and axiom-flow answers Success only after the instance is durably stored (fsynced
  blob + SQLite publish), so this is the time until all are safe.
* drain time (axiom-flow only, informative): from the same start until the pipeline is
  idle (match -> morph -> route delivered every instance to the filesystem
  destination), observed by polling ``/api/v1/status`` every 0.2 s; and the CPU seconds
  axiom-flow's processes used over it (from /proc).

Both receivers write to the same local disk. ``storescp`` runs bit-preserving (``+B``)
with ``TCP_NODELAY=1`` (see tests/support/procs.py). The reported figure per receiver is
the MEDIAN over ``--repeat`` runs (best is printed too); runs alternate
storescp / axiom-flow so drift hits both alike, and ``sync`` runs before each timed
send so no run pays for the previous run's page-cache writeback. Nothing is deleted
until the end, so no run pays for the previous run's deleted inodes either (see
bench/route.py).

Correctness is checked on every run, and the script exits non-zero if it fails:
every instance answered Success (``storescu -v`` output), no failure lines, and the
number of files at the end (storescp output dir; axiom-flow ingest bucket and
filesystem destination, matched by SOP Instance UID) equals ``--count``.

The last printed line is ``ingest_ratio_vs_storescp=<axiom inst/s / storescp inst/s>``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.dicomgen import make_ct_study  # noqa: E402
from tests.support.procs import AxiomServer, StoreSCP, free_port, storescu  # noqa: E402

SUCCESS_LINE = b"Received Store Response (Success)"


def check_storescu(proc: subprocess.CompletedProcess, count: int, label: str) -> None:
    out = proc.stdout + proc.stderr
    ok = out.count(SUCCESS_LINE)
    responses = out.count(b"Received Store Response")
    if proc.returncode != 0 or ok != count or responses != count:
        tail = out.decode(errors="replace")[-2000:]
        raise SystemExit(f"{label}: storescu rc={proc.returncode}, {ok}/{count} answered Success "
                         f"({responses} responses)\n{tail}")


def run_storescp(work: Path, files: list[Path], max_pdu: int, run: int) -> dict:
    out_dir = work / f"storescp-{run}"
    scp = StoreSCP(out_dir, extra=["--max-pdu", str(max_pdu)])
    try:
        scp.start()
        os.sync()  # earlier runs' dirty pages are not this run's cost
        t0 = time.perf_counter()
        proc = storescu(scp.port, files, called_ae=scp.ae_title, extra=["--max-pdu", str(max_pdu)], check=False)
        elapsed = time.perf_counter() - t0
    finally:
        scp.stop()
    check_storescu(proc, len(files), "storescp")
    n_files = len(scp.files())
    if n_files != len(files) or scp.received_count() != len(files):
        raise SystemExit(f"storescp: {n_files} files / {scp.received_count()} requests for {len(files)} sent")
    return {"ingest_s": elapsed}


def axiom_config(port: int, max_pdu: int, dest_dir: Path) -> dict:
    return {
        "listeners": [{"id": "main", "ae_title": "AXIOM", "host": "127.0.0.1", "port": port, "max_pdu": max_pdu}],
        "destinations": [{"id": "local", "type": "filesystem", "path": str(dest_dir)}],
        "rulesets": [{"id": "bench", "rules": [{"id": "everything", "destinations": ["local"]}]}],
    }


def run_axiom(work: Path, files: list[Path], sop_uids: set[str], max_pdu: int, run: int,
              drain_timeout: float, env: dict | None) -> dict:
    data_dir = work / f"axiom-{run}"
    dest_dir = work / f"axiom-{run}-out"
    port = free_port()
    server = AxiomServer(data_dir, axiom_config(port, max_pdu, dest_dir), dicom_port=port, env=env)
    try:
        server.start()
        os.sync()
        cpu0 = cpu_seconds(server.proc.pid)
        t0 = time.perf_counter()
        proc = storescu(port, files, called_ae="AXIOM", extra=["--max-pdu", str(max_pdu)], check=False)
        elapsed = time.perf_counter() - t0
        status = server.wait_idle(timeout=drain_timeout)
        drained = time.perf_counter() - t0
        cpu = cpu_seconds(server.proc.pid) - cpu0
    finally:
        server.stop()
    check_storescu(proc, len(files), "axiom-flow")
    ingest_objs = [p for p in (data_dir / "blobs" / "ingest").rglob("*.dcm")]
    delivered = {p.stem for p in dest_dir.rglob("*.dcm")}
    problems = []
    if len(ingest_objs) != len(files):
        problems.append(f"{len(ingest_objs)} objects in the ingest bucket")
    if delivered != sop_uids:
        problems.append(f"{len(delivered)} files at the destination, {len(sop_uids - delivered)} missing")
    delivered_n = status.get("delivered")
    if isinstance(status.get("deliveries"), dict):
        delivered_n = status["deliveries"].get("delivered")
    if delivered_n != len(files) or status.get("exceptions"):
        problems.append(f"status {status}")
    if problems:
        raise SystemExit(f"axiom-flow run {run}: " + "; ".join(problems) + f" (log: {server.log_path})")
    return {"ingest_s": elapsed, "drain_s": drained, "cpu_s": cpu}


def bench_arguments(doc: str, *, repeat: int, what: str) -> argparse.ArgumentParser:
    """The arguments every storescu-driven benchmark takes; add your own, then
    :func:`parse_bench_arguments`."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500, help="instances per run (default 500)")
    ap.add_argument("--repeat", type=int, default=repeat,
                    help=f"runs per {what}; the median is reported (default {repeat})")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to generate data and receive (default: a temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    return ap


@contextlib.contextmanager
def bench_workdir(args, prefix: str):
    """A work dir for one benchmark run, removed afterwards unless ``--keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    try:
        yield work
    finally:
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def require_free_space(work: Path, data_bytes: int, copies: int) -> None:
    """Stop before starting if the work dir's filesystem cannot hold ``copies`` of the
    generated data (runs keep their files until the end, see bench/route.py)."""
    needed = data_bytes * copies * 1.1
    free = shutil.disk_usage(work).free
    if free < needed:
        raise SystemExit(f"{work}: {free / 1e9:.1f} GB free, the runs need about {needed / 1e9:.1f} GB "
                         f"({copies} copies of {data_bytes / 1e6:.0f} MB); use --workdir or fewer --count/--repeat")
    print(f"disk: {needed / 1e9:.1f} GB needed for the runs' files, {free / 1e9:.1f} GB free")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live child processes
    (Linux /proc; 0 where it is not available), and with ``reaped_children`` also those
    of the children it has waited for. Take it while the process is still running."""
    total = 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS
        if reaped_children:
            total += (int(stat[13]) + int(stat[14])) / _CLOCK_TICKS
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child), reaped_children=reaped_children)
    except (OSError, IndexError, ValueError):
        pass
    return total


def print_load_average(busy_above: float) -> None:
    load = os.getloadavg()[0]
    print(f"load average after: {load:.2f}" + ("  (other work was running: numbers are pessimistic)"
                                                if load > busy_above else ""))


def parse_bench_arguments(ap: argparse.ArgumentParser, argv: list[str] | None):
    args = ap.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        ap.error("--count and --repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    ap = bench_arguments(__doc__, repeat=5, what="receiver")
    ap.add_argument("--max-pdu", type=int, default=131072,
                    help="max PDU for storescu, storescp and the axiom listener (default 131072)")
    ap.add_argument("--rows", type=int, default=512, help="image rows/columns (512: ~530 KB per instance)")
    ap.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for the pipeline to drain")
    args = parse_bench_arguments(ap, argv)

    with bench_workdir(args, "axiom-bench-ingest-") as work:
        t = time.perf_counter()
        files = make_ct_study(work / "input", args.count, rows=args.rows, columns=args.rows)
        total_bytes = sum(p.stat().st_size for p in files)
        sop_uids = {_sop_uid(p) for p in files}
        per_mb = total_bytes / len(files) / 1e6
        print(f"generated {len(files)} instances, {per_mb * 1000:.0f} KB each, "
              f"{total_bytes / 1e6:.1f} MB in {time.perf_counter() - t:.1f}s")
        # per repeat: storescp's files, axiom-flow's ingest objects and its destination's
        require_free_space(work, total_bytes, 3 * args.repeat)
        print(f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
              f"{platform.system()} {platform.release()}; storescu {_dcmtk_version()}")
        print(f"code: {_git_describe()}")
        print(f"max_pdu={args.max_pdu} repeat={args.repeat} (median reported); "
              f"load average before: {os.getloadavg()[0]:.2f}")

        scp_runs, ax_runs = [], []
        for run in range(args.repeat):
            r = run_storescp(work, files, args.max_pdu, run)
            scp_runs.append(r)
            print(f"  run {run + 1}: storescp   ingest {r['ingest_s']:.2f}s  {args.count / r['ingest_s']:.1f} inst/s", flush=True)
            r = run_axiom(work, files, sop_uids, args.max_pdu, run, args.drain_timeout, None)
            ax_runs.append(r)
            print(f"  run {run + 1}: axiom-flow ingest {r['ingest_s']:.2f}s  {args.count / r['ingest_s']:.1f} inst/s"
                  f"  (drained {r['drain_s']:.2f}s; CPU {r['cpu_s']:.1f}s)", flush=True)

        def summary(label: str, runs: list[dict]) -> float:
            med = statistics.median(r["ingest_s"] for r in runs)
            best = min(r["ingest_s"] for r in runs)
            rate = args.count / med
            print(f"{label:<11} ingest: {rate:7.1f} inst/s  {total_bytes / med / 1e6:7.1f} MB/s  "
                  f"(median {med:.2f}s, best {args.count / best:.1f} inst/s)")
            return rate

        print(f"all {args.repeat * 2} runs: {args.count}/{args.count} answered Success, file counts match")
        scp_rate = summary("storescp", scp_runs)
        ax_rate = summary("axiom-flow", ax_runs)
        drain = statistics.median(r["drain_s"] for r in ax_runs)
        print(f"axiom-flow drained (all delivered to the filesystem destination): {args.count / drain:7.1f} inst/s  "
              f"{total_bytes / drain / 1e6:7.1f} MB/s  (median {drain:.2f}s after the first byte)")
        print_load_average(busy_above=1.0)
        print(f"ingest_ratio_vs_storescp={ax_rate / scp_rate:.3f}")
        return 0


def _sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _git_describe() -> str:
    """Commit of the code under test (read-only git query), and whether tracked files differ."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head or '?'}{' + uncommitted changes' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _dcmtk_version() -> str:
    try:
        out = subprocess.run(["storescu", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].split("storescu", 1)[-1].strip(" $") if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
