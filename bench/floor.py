"""Library floor of the route benchmark: the CPU that receiving, changing and sending
one instance costs with pynetdicom and pydicom alone, before anything axiom-flow adds.

    .venv/bin/python bench/floor.py [--count 500] [--repeat 3]

bench/route.py measures axiom-flow end to end. This measures, on the same kind of data
(``--count`` CT instances, 512 x 512 16-bit, about 530 KB, Explicit VR LE), the parts a
router built on these libraries cannot skip, each alone and in CPU seconds:

* receive: a plain pynetdicom SCP in this process, with the gateway's chunked receive
  (``STORE_RECV_CHUNKED_DATASET``) and pynetdicom's default polling; its handler only
  renames the received file. No fsync, no metadata, no queue. One ``storescu``
  association sends everything.
* change: for each instance, read the file, parse it (``read_instance``: structure check
  and pydicom), set 3 tags, write it by splice with its sha256 (``write_spliced``). No
  fsync, no queue.
* send: a plain pynetdicom SCU in this process, ``STORE_SEND_CHUNKED_DATASET`` as the
  route stage sets it, one association to a dcmtk ``storescp``.
* the two dcmtk ends, ``storescu`` and ``storescp``, in a direct run between them.

CPU comes from ``time.process_time`` (this process, all threads), ``getrusage`` for the
waited ``storescu``, and ``/proc`` for ``storescp``. The figure per part is the least
over ``--repeat`` runs (a floor: noise only adds), the median is printed too. After each
part the page cache of what it wrote is dropped, as axiom-flow does for its own objects:
in this VM, writing into pages not used for a while costs several times more, and which
pages a part gets would otherwise depend on the parts before it. The sum is the CPU one
instance needs at the least on this machine; ``nproc`` cores can then route at most
``nproc / sum`` instances per second, at 100% of every core and with nothing else
(durability, queueing, contention between the processes) added. The last line is
``route_floor_max_inst_s=<that rate>``.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt  # noqa: E402

from bench.ingest import (  # noqa: E402
    _dcmtk_version,
    _git_describe,
    bench_arguments,
    bench_workdir,
    check_storescu,
    cpu_seconds,
    parse_bench_arguments,
    print_load_average,
)
from bench.route import MAX_PDU, NEW_TAGS  # noqa: E402
from shared.adapters.files import drop_cached  # noqa: E402
from shared.dicom.io import read_instance  # noqa: E402
from shared.dicom.splice import write_spliced  # noqa: E402
from shared.morph import apply_actions  # noqa: E402
from tests.support.dicomgen import make_ct_study  # noqa: E402
from tests.support.procs import StoreSCP, free_port, storescu  # noqa: E402

_config.STORE_RECV_CHUNKED_DATASET = True
_config.STORE_SEND_CHUNKED_DATASET = True


def _drop_pages(work: Path, run: int) -> None:
    for part in ("received", "changed", "sent", "direct", "spool"):
        out = work / f"{part}-{run}"
        if out.is_dir():
            for path in out.iterdir():
                drop_cached(path)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dcmtk_ends(work: Path, files: list[Path], run: int) -> float:
    """CPU seconds of storescu and storescp for a direct transfer of ``files``."""
    scp = StoreSCP(work / f"direct-{run}")
    scp.start()
    try:
        before = _children_cpu()
        proc = storescu(scp.port, files, called_ae=scp.ae_title, extra=["--max-pdu", str(MAX_PDU)], check=False)
        sender = _children_cpu() - before
        check_storescu(proc, len(files), "direct")
        time.sleep(0.5)  # storescp reaps the child that served the association
        receiver = cpu_seconds(scp.proc.pid, reaped_children=True)
    finally:
        scp.stop()
    if scp.received_count() != len(files):
        raise SystemExit(f"direct: storescp holds {scp.received_count()} of {len(files)} files")
    return sender + receiver


def receive(work: Path, files: list[Path], run: int) -> float:
    """CPU seconds of a plain pynetdicom SCP (this process) receiving ``files``."""
    out = work / f"received-{run}"
    out.mkdir()
    tempfile_dir = work / f"spool-{run}"
    tempfile_dir.mkdir()
    tempfile.tempdir = str(tempfile_dir)  # pynetdicom's chunked receive writes here

    def handle_store(event):
        os.replace(event.dataset_path, out / f"{event.request.AffectedSOPInstanceUID}.dcm")
        return 0x0000

    ae = AE("FLOOR")
    ae.maximum_pdu_size = MAX_PDU
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        before = time.process_time()
        proc = storescu(port, files, called_ae="FLOOR", extra=["--max-pdu", str(MAX_PDU)], check=False)
        cpu = time.process_time() - before
    finally:
        server.shutdown()
        tempfile.tempdir = None
    check_storescu(proc, len(files), "pynetdicom SCP")
    if len(list(out.iterdir())) != len(files):
        raise SystemExit(f"pynetdicom SCP: {len(list(out.iterdir()))} of {len(files)} files received")
    return cpu


def change(work: Path, files: list[Path], run: int) -> float:
    """CPU seconds of parsing, setting 3 tags and writing ``files`` by splice."""
    out = work / f"changed-{run}"
    out.mkdir()
    actions = [{"action": "set", "tag": k, "value": v} for k, v in NEW_TAGS.items()]
    before = time.process_time()
    for n, path in enumerate(files):
        data = path.read_bytes()
        ds = read_instance(path, data=data)
        apply_actions(ds, actions)
        if write_spliced(path, ds, None, out / f"{n}.dcm", data=data) is None:
            raise SystemExit(f"{path}: the splice did not apply")
    cpu = time.process_time() - before
    sample = dcmread(out / "0.dcm", stop_before_pixels=True)
    if any(str(sample.get(k)) != v for k, v in NEW_TAGS.items()):
        raise SystemExit("changed files do not carry the new tag values")
    return cpu


def send(work: Path, files: list[Path], run: int) -> float:
    """CPU seconds of a plain pynetdicom SCU (this process) sending ``files``."""
    scp = StoreSCP(work / f"sent-{run}")
    scp.start()
    try:
        first = dcmread(files[0], stop_before_pixels=True)
        ae = AE("FLOOR")
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title, max_pdu=MAX_PDU)
        if not assoc.is_established:
            raise SystemExit("pynetdicom SCU: no association with storescp")
        before = time.process_time()
        failed = sum(1 for path in files if getattr(assoc.send_c_store(path), "Status", None) != 0x0000)
        cpu = time.process_time() - before
        assoc.release()
    finally:
        scp.stop()
    if failed or scp.received_count() != len(files):
        raise SystemExit(f"pynetdicom SCU: {failed} failed, storescp holds {scp.received_count()} of {len(files)}")
    return cpu


PARTS = [
    ("receive (pynetdicom SCP)", receive),
    ("change (parse, 3 tags, splice, sha256)", change),
    ("send (pynetdicom SCU)", send),
    ("storescu + storescp (direct)", dcmtk_ends),
]


def main(argv: list[str] | None = None) -> int:
    ap = bench_arguments(__doc__, repeat=3, what="part")
    args = parse_bench_arguments(ap, argv)
    with bench_workdir(args, "axiom-bench-floor-") as work:
        files = make_ct_study(work / "input", args.count)
        size = sum(p.stat().st_size for p in files) / len(files)
        print(f"generated {len(files)} instances, {size / 1e3:.0f} KB each")
        print(f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
              f"{platform.system()} {platform.release()}; storescu {_dcmtk_version()}")
        print(f"code: {_git_describe()}")
        print(f"max_pdu={MAX_PDU} repeat={args.repeat} (least reported); load average before: {os.getloadavg()[0]:.2f}")
        runs: dict[str, list[float]] = {label: [] for label, _ in PARTS}
        for run in range(args.repeat):
            for label, part in PARTS:
                cpu = part(work, files, run)
                _drop_pages(work, run)
                runs[label].append(cpu)
                print(f"  run {run + 1}: {label:<40} {cpu:6.2f} s CPU  {1e3 * cpu / len(files):5.2f} ms/instance",
                      flush=True)
        total = 0.0
        for label, cpus in runs.items():
            per = 1e3 * min(cpus) / len(files)
            total += per
            print(f"{label:<40} {per:5.2f} ms CPU per instance (least; median "
                  f"{1e3 * statistics.median(cpus) / len(files):.2f})")
        cores = os.cpu_count() or 1
        print(f"{'sum':<40} {total:5.2f} ms CPU per instance")
        print_load_average(busy_above=1.0)
        print(f"route_floor_max_inst_s={cores * 1e3 / total:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
