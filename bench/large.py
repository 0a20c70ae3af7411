"""Large instances: the peak memory of ``axiom-flow serve`` (all its processes) while one
instance of ``--size-mb`` goes through it, per destination type.

    .venv/bin/python bench/large.py [--size-mb 1024 4096] [--dest filesystem cstore dicomweb]

The instance is an Enhanced CT (1.2.840.10008.5.1.4.1.1.2.1), 512 x 512 16-bit frames of
zeros, Explicit VR Little Endian, generated at run time and written in chunks (its pixel
data is never in this process's memory either). ``storescu`` sends it into a fresh
``axiom-flow serve`` whose one rule sets one tag (so morph writes a new object) and sends
it to the destination under test: a folder (``filesystem``), a dcmtk ``storescp``
(``cstore``), or Orthanc's STOW-RS (``dicomweb``). The resident set size of the serve
process and of each of its children is sampled every 0.1 s from /proc until the
instance is delivered: the peak of their sum and of the largest one are printed. A run
fails if the instance is not delivered, or if the delivered Pixel Data differs in length.

The last line is ``large_peak_rss_mb=<max over runs>``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import bench_workdir  # noqa: E402
from tests.support.large import FRAME, make_large_instance, pixel_data_length, sop_instance_uid  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.procs import AxiomServer, StoreSCP, free_port, storescu  # noqa: E402


def tree_rss_mb(pid: int) -> list[float]:
    """Resident set size of ``pid`` and of each of its descendants, MB (Linux /proc)."""
    sizes = []
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sizes


class PeakRss:
    """Peaks of the whole tree's RSS (``peak``) and of its largest process (``largest``)."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s, self.peak, self.largest = pid, every_s, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            sizes = tree_rss_mb(self.pid) or [0.0]
            self.peak, self.largest = max(self.peak, sum(sizes)), max(self.largest, max(sizes))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run(work: Path, dest: str, instance: Path, uid: str, length: int, timeout: float) -> PeakRss:
    peer = None
    if dest == "filesystem":
        destination = {"id": "dest", "type": "filesystem", "path": str(work / "out")}
    elif dest == "cstore":
        peer = StoreSCP(work / "storescp").start()
        destination = {"id": "dest", "type": "cstore", "ae_title": peer.ae_title, "host": "127.0.0.1",
                       "port": peer.port, "timeout_s": 300}
    else:
        peer = Orthanc(work / "orthanc").start()
        destination = {"id": "dest", "type": "dicomweb", "url": peer.dicomweb, "timeout_s": 600}
    port = free_port()
    config = {"destinations": [destination],
              "rulesets": [{"id": "large", "rules": [{"id": "all", "destinations": ["dest"], "actions": [
                  {"action": "set", "tag": "InstitutionName", "value": "AXIOM LARGE"}]}]}]}
    server = AxiomServer(work / "axiom", config, dicom_port=port)
    try:
        server.start()
        with PeakRss(server.proc.pid) as rss:
            storescu(port, [instance], extra=["--max-pdu", "131072"], timeout=timeout)
            deadline = time.monotonic() + timeout
            while True:
                status = server.status()
                if status["deliveries"].get("delivered") == 1 and not any(status["queue"].values()):
                    break
                if status.get("exceptions") or time.monotonic() > deadline:
                    raise SystemExit(f"{dest}: not delivered: {status} (log: {server.log_path})")
                time.sleep(0.2)
        _check_arrived(work, dest, uid, length)
        return rss
    finally:
        server.stop()
        if peer is not None:
            peer.stop()


def _check_arrived(work: Path, dest: str, uid: str, length: int) -> None:
    """One file at the destination (Orthanc keeps each instance as a plain file in its
    storage directory) with the instance's UID and the whole Pixel Data."""
    folder = work / {"filesystem": "out", "cstore": "storescp", "dicomweb": "orthanc/storage"}[dest]
    files = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > length]
    if len(files) != 1 or pixel_data_length(files[0]) != length or sop_instance_uid(files[0]) != uid:
        raise SystemExit(f"{dest}: expected one file of {uid} with {length} bytes of Pixel Data, found {files}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--dest", nargs="+", choices=("filesystem", "cstore", "dicomweb"),
                    default=["filesystem", "cstore", "dicomweb"])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)
    peaks = []
    with bench_workdir(args, "axiom-bench-large-") as work:
        for size in args.size_mb:
            instance = work / f"large-{size}.dcm"
            t = time.perf_counter()
            uid, length = make_large_instance(instance, size)
            print(f"generated {instance.stat().st_size / 2**20:.0f} MB ({length // FRAME} frames) in "
                  f"{time.perf_counter() - t:.1f}s", flush=True)
            for dest in args.dest:
                t = time.perf_counter()
                rss = run(work / f"{size}-{dest}", dest, instance, uid, length, args.timeout)
                peaks.append(rss.peak)
                print(f"  {size} MB -> {dest:<10} peak RSS {rss.peak:7.0f} MB all processes, {rss.largest:7.0f} MB"
                      f" the largest  ({time.perf_counter() - t:.0f}s)", flush=True)
            instance.unlink()
    print(f"large_peak_rss_mb={max(peaks):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
