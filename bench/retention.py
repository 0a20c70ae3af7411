"""Retention benchmark: C-STORE latency while the embedded runtime deletes old objects.

    TCP_NODELAY=1 .venv/bin/python bench/retention.py [--old 20000] [--count 400] [--rate 5]

``axiom-flow serve`` (gateway, pipeline and retention sweeper in their default
processes) receives ``--count`` small CT instances (64 x 64) per phase from dcmtk
``storescu`` on one association; each C-STORE is timed from request to response (the
gateway answers after the durable ingest: file fsynced and renamed, queue commit
fsynced). Its config keeps received objects forever and processed ones for 10 s
(``processed_days`` 0.000116): the instances sent have no actions, so they add nothing
to the processed bucket, and the ``--old`` files this script puts there are the only
ones retention deletes. Phases:

1. ``baseline``: nothing to delete yet.
2. ``sweeper``: ``--old`` files are put in the processed bucket (not timed), and after
   10 s the server's retention thread moves them to its trash (every 5 s) and unlinks
   them at ``--rate`` per second while storescu sends.
3. ``burst``: this script unlinks everything left (trash and bucket) at once while
   storescu sends: what a naive cleanup (``rm -rf``, a cron ``find -delete``) does.
4. ``after burst``: sent right after the burst ended.

On ext4 without a journal, inodes deleted in the last minutes are skipped one by one by
every file creation (``recently_deleted()``): phases 3 and 4 show what a mass delete
costs, phase 2 what the paced sweeper costs. Every instance must reach the filesystem
destination, or the script fails.

Prints one line per phase: ``phase n p50 p99 max deletes``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.dicomgen import make_ct_study  # noqa: E402
from tests.support.procs import DCMTK_ENV, AxiomServer, require  # noqa: E402

PROCESSED_DAYS = 10 / 86400


def _send(port: int, files: list[Path]) -> list[float]:
    """Send ``files`` with dcmtk ``storescu`` on one association; the time from each
    "Sending Store Request" line to its "Received Store Response" line, read as
    storescu writes them."""
    proc = subprocess.Popen([require("storescu"), "-v", "-aet", "BENCH", "-aec", "AXIOM", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=DCMTK_ENV)
    times, sent, log_lines = [], None, []
    for line in proc.stdout:
        now = time.perf_counter()
        log_lines.append(line)
        if "Sending Store Request" in line:
            sent = now
        elif "Received Store Response" in line and sent is not None:
            times.append(now - sent)
            sent = None
    assert proc.wait() == 0 and len(times) == len(files), "".join(log_lines[-20:])
    assert all("(Success)" in ln for ln in log_lines if "Received Store Response" in ln), "not every C-STORE succeeded"
    return times


def _burst(data: Path) -> int:
    """Unlink every file left in the trash and the processed bucket, as fast as possible."""
    done = 0
    for root in (data / "trash", data / "blobs" / "processed"):
        for dirpath, _, names in os.walk(root):
            for name in names:
                try:
                    os.unlink(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # the server's sweeper was first
                done += 1
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=int, default=20000, help="old settled objects to delete")
    parser.add_argument("--count", type=int, default=400, help="C-STOREs per phase")
    parser.add_argument("--rate", type=float, default=5.0, help="the sweeper's max_deletes_per_s")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-retention-", dir=REPO))
    config = {
        "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
        "settings": {"retention": {"received_days": None, "processed_days": PROCESSED_DAYS, "quarantine_days": None,
                                   "max_deletes_per_s": args.rate, "sweep_every_s": 5}},
    }
    phases = {name: make_ct_study(work / "send" / name, args.count, rows=64, columns=64)
              for name in ("baseline", "sweeper", "burst", "after burst")}
    data = work / "data"
    try:
        with AxiomServer(data, config) as server:
            for name, files in phases.items():
                server.wait_idle()
                if name == "sweeper":
                    for n in range(args.old):
                        path = data / "blobs" / "processed" / "2020" / "01" / f"{n % 28 + 1:02d}" / f"1.2.{n}.dcm"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(b"\0" * 4096)
                    time.sleep(PROCESSED_DAYS * 86400 + 6)  # old enough, and the next sweep moved them
                os.sync()
                before = server.status()["retention"]["deleted"]
                burst = [0]
                worker = threading.Thread(target=lambda: burst.__setitem__(0, _burst(data))) if name == "burst" else None
                if worker:
                    worker.start()
                times = _send(server.dicom_port, files)
                if worker:
                    worker.join()
                deletes = server.status()["retention"]["deleted"] - before + burst[0]
                ms = sorted(t * 1000 for t in times)
                print("%-12s n=%d p50=%.2f ms p99=%.2f ms max=%.2f ms deletes=%d"
                      % (name, len(ms), statistics.median(ms), ms[int(len(ms) * 0.99) - 1], ms[-1], deletes), flush=True)
            server.wait_idle()
            delivered = len(list((data / "out").rglob("*.dcm")))
            assert delivered == 4 * args.count, f"{delivered} of {4 * args.count} delivered"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
