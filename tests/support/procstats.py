"""What a server process holds, read from /proc: resident memory (and its peak),
threads, open descriptors; and the check that, after an attack, it holds no more than
before it (plus some slack for memory, which allocators keep)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import DCMTK_ENV, require
from tests.support.procs import storescu as storescu_files

MIB = 1024 * 1024
# memory a healthy server may keep after the work in one test (caches, allocator pools);
# the defects this guards against held 70-220 MB
RSS_SLACK = 24 * MIB


@dataclass(frozen=True)
class Usage:
    rss: int
    peak_rss: int
    threads: int
    fds: int
    tmp_files: int
    open_files: tuple[str, ...] = ()  # what the descriptors point at, for the failure message

    def __str__(self) -> str:
        return (f"RSS {self.rss / MIB:.1f} MiB (peak {self.peak_rss / MIB:.1f}), {self.threads} threads,"
                f" {self.fds} descriptors, {self.tmp_files} temporary files")


def usage(pid: int, tmp_dir: Path | None = None) -> Usage:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    kib = lambda key: int(status[key].split()[0]) * 1024  # noqa: E731
    tmp_files = sum(1 for p in tmp_dir.iterdir() if p.is_file()) if tmp_dir and tmp_dir.exists() else 0
    open_files = _descriptors(pid)
    return Usage(rss=kib("VmRSS"), peak_rss=kib("VmHWM"), threads=int(status["Threads"]),
                 fds=len(open_files), tmp_files=tmp_files, open_files=open_files)


def _descriptors(pid: int) -> tuple[str, ...]:
    """What the open descriptors point at, but for SQLite's files: the local stores keep
    a connection per thread, which opens its ``-wal`` and ``-shm`` files on its first
    read, and is closed only when the garbage collector gets to it after its thread
    ended (a connection's statement cache refers back to it), whenever that is."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if not target.endswith((".db", "-wal", "-shm")):
            targets.append(target.split(":")[0] if target.startswith(("socket:", "pipe:")) else target)
    return tuple(sorted(targets))


def reset_peak(pid: int) -> None:
    """Start VmHWM (peak RSS) over from the current RSS (``clear_refs`` 5, Linux 4.0),
    so a test's peak is its own; a no-op where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def back_to(baseline: Usage, pid: int, tmp_dir: Path | None = None, *, timeout: float = 30.0) -> Usage:
    """Wait until ``pid`` holds no more threads, descriptors and temporary files than
    ``baseline`` and no more than RSS_SLACK more memory; AssertionError with both when
    it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        now = usage(pid, tmp_dir)
        if (now.threads <= baseline.threads and now.fds <= baseline.fds and now.tmp_files <= baseline.tmp_files
                and now.rss <= baseline.rss + RSS_SLACK):
            return now
        if time.monotonic() > deadline:
            opened = Counter(now.open_files) - Counter(baseline.open_files)
            raise AssertionError(f"server did not return to its baseline within {timeout}s:\n"
                                 f"  before: {baseline}\n  after:  {now}\n  newly open: {dict(opened)}")
        time.sleep(0.2)


def warm_up(server, instance: Path) -> None:
    """Two stores, a status and a C-ECHO through ``server`` (an AxiomServer): what the
    first associations and requests open and load (SQLite connections and WAL files,
    imports, caches) stays, and is not what a test's baseline should count."""
    for _ in range(2):
        storescu_files(server.dicom_port, [instance])
        server.wait_idle()
    assert echo(server.dicom_port)


def echo(port: int, *, called_ae: str = "AXIOM", timeout: float = 30) -> bool:
    """True when dcmtk ``echoscu`` gets a C-ECHO answered Success (PS3.7 9.1.5)."""
    result = subprocess.run([require("echoscu"), "-aec", called_ae, "-to", "10", "127.0.0.1", str(port)],
                            capture_output=True, env=DCMTK_ENV, timeout=timeout)
    return result.returncode == 0


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
    """Peaks of the whole tree's RSS (``peak``) and of its largest process (``largest``),
    MB, sampled every ``every_s``; ``idle`` is the tree's RSS when sampling began."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s, self.peak, self.largest = pid, every_s, 0.0, 0.0
        self.idle = sum(tree_rss_mb(pid))
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
