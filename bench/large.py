"""Large instances: the peak memory of ``axiom-flow serve`` (all its processes) while one
instance of ``--size-mb`` goes through it, per destination type.

    .venv/bin/python bench/large.py [--size-mb 1024 4096] [--dest filesystem cstore dicomweb] [--shape default one]

The instance is an Enhanced CT (1.2.840.10008.5.1.4.1.1.2.1) of 512 x 512 16-bit frames
holding a repeated pseudo-random block, Explicit VR Little Endian
(``tests.support.dicomgen.make_large_instance``), generated at run time and written in
chunks (its pixel data is never in this process's memory either). ``storescu`` sends it into a fresh
``axiom-flow serve`` whose one rule sets one tag (so morph writes a new object) and sends
it to the destination under test: a folder (``filesystem``), a dcmtk ``storescp``
(``cstore``), or Orthanc's STOW-RS (``dicomweb``). The resident set size of the serve
process and of each of its children is sampled every 0.1 s from /proc until the
instance is delivered: the peak of their sum and of the largest one are printed. A run
fails if the instance is not delivered, or if the delivered Pixel Data differs (length and
sha256).

Each size runs in two shapes of ``serve``: ``default`` (this machine's default: on two
cores, the gateway's process and two children, each a Python interpreter of its own
with an idle RSS of ~90 MB) and ``one`` (``--pipeline-processes 0``: everything in one
process). The idle RSS of the tree before the instance arrives is printed too: what a
large instance adds is the peak minus it.

The last line is ``large_peak_rss_mb=<max over runs>``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import bench_workdir  # noqa: E402
from tests.support.large import FRAME, make_large_instance, pixel_data_digest, sop_instance_uid  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.procs import AxiomServer, StoreSCP, free_port, storescu  # noqa: E402
from tests.support.procstats import PeakRss  # noqa: E402


def run(work: Path, dest: str, instance: Path, uid: str, pixels: tuple[int, str], timeout: float,
        shape: str) -> PeakRss:
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
    env = {"AXIOM_PIPELINE_PROCESSES": "0", "AXIOM_ROUTE_PROCESSES": "0"} if shape == "one" else {}
    server = AxiomServer(work / "axiom", config, dicom_port=port, env=env)
    try:
        server.start()
        time.sleep(3)  # the child processes finish importing: the idle RSS is theirs too
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
        _check_arrived(work, dest, uid, pixels)
        return rss
    finally:
        server.stop()
        if peer is not None:
            peer.stop()


def _check_arrived(work: Path, dest: str, uid: str, pixels: tuple[int, str]) -> None:
    """One file at the destination (Orthanc keeps each instance as a plain file in its
    storage directory) with the instance's UID and the sent Pixel Data (length, sha256)."""
    length = pixels[0]
    folder = work / {"filesystem": "out", "cstore": "storescp", "dicomweb": "orthanc/storage"}[dest]
    files = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > length]
    if len(files) != 1 or pixel_data_digest(files[0]) != pixels or sop_instance_uid(files[0]) != uid:
        raise SystemExit(f"{dest}: expected one file of {uid} with {length} bytes of Pixel Data, found {files}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--dest", nargs="+", choices=("filesystem", "cstore", "dicomweb"),
                    default=["filesystem", "cstore", "dicomweb"])
    ap.add_argument("--shape", nargs="+", choices=("default", "one"), default=["default", "one"],
                    help="serve's default processes on this machine, or everything in one process "
                         "(--pipeline-processes 0)")
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
            pixels = pixel_data_digest(instance)
            print(f"generated {instance.stat().st_size / 2**20:.0f} MB ({length // FRAME} frames) in "
                  f"{time.perf_counter() - t:.1f}s", flush=True)
            for shape in args.shape:
                for dest in args.dest:
                    t = time.perf_counter()
                    run_dir = work / f"{size}-{shape}-{dest}"
                    rss = run(run_dir, dest, instance, uid, pixels, args.timeout, shape)
                    if not args.keep:  # three copies of the instance: a 4 GB run needs its disk back
                        shutil.rmtree(run_dir, ignore_errors=True)
                    peaks.append(rss.peak)
                    print(f"  {size} MB -> {dest:<10} {shape:>7} shape: peak RSS {rss.peak:5.0f} MB all processes "
                          f"(idle {rss.idle:3.0f}), {rss.largest:4.0f} MB the largest "
                          f"({time.perf_counter() - t:.0f}s)", flush=True)
            instance.unlink()
    print(f"large_peak_rss_mb={max(peaks):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
