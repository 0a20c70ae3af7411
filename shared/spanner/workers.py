"""The processes the spanner's C-FIND searches run in.

A pynetdicom association is three threads that hand each PDU from one to the next. In
the process that also runs the fan-out's event loop, the QIDO-RS answers and the other
sources' associations, each of those hand-offs waited for the interpreter lock, and a
slow source's few protocol steps were held up by the others' work. In a process of its
own, each association's threads compete with nothing but each other, and the operating
system gives a process that was waiting on its socket the CPU when the bytes arrive.

:func:`executor` is this process's pool, shared by every :class:`CFindClient`
(:mod:`shared.spanner.clients`): ``AXIOM_SPANNER_CFIND_PROCESSES`` worker processes
(:data:`DEFAULT_PROCESSES` by default), started on demand from a ``forkserver`` that has
the clients imported, so a new worker is ready in milliseconds. Each runs one C-FIND at a
time, so the count also caps the C-FINDs in flight from this process; a source that
holds one until its deadline holds that worker only. ``0`` runs the searches in threads
of this process instead (a Cloud Run job task, which asks one source). Workers log as
their parent does and make their associations event-driven (:mod:`shared.dicom.reactor`).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import tempfile
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from shared import logs

log = logging.getLogger(__name__)

PROCESSES_ENV = "AXIOM_SPANNER_CFIND_PROCESSES"
DEFAULT_PROCESSES = 8
THREADS = 64  # with PROCESSES_ENV=0: C-FINDs in flight at once, in threads of this process

_executor: Executor | None = None
_lock = threading.Lock()


def processes() -> int:
    """How many worker processes: ``$AXIOM_SPANNER_CFIND_PROCESSES``, else the default."""
    text = os.environ.get(PROCESSES_ENV, "").strip()
    if not text:
        return DEFAULT_PROCESSES
    if not text.isdigit():
        log.warning("%s is not a whole number of processes (0: threads); using %d", PROCESSES_ENV, DEFAULT_PROCESSES)
        return DEFAULT_PROCESSES
    return int(text)


def executor() -> Executor:
    """This process's C-FIND executor, made on first use."""
    global _executor
    with _lock:
        if _executor is None:
            count = processes()
            if count == 0:
                _executor = ThreadPoolExecutor(THREADS, thread_name_prefix="cfind")
            else:
                _short_multiprocessing_temp_dir()
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["shared.spanner.clients"])
                _executor = ProcessPoolExecutor(count, mp_context=context, initializer=_start_worker,
                                                initargs=(logging.getLogger().level, logs.current_format()))
        return _executor


def _short_multiprocessing_temp_dir() -> None:
    """The forkserver listens on a Unix socket in multiprocessing's temp dir, made on its
    first use under ``tempfile``'s, and a socket's path holds at most 108 bytes. serve
    points ``tempfile`` at its data dir, which may be deep (or, in a test, deleted later):
    make multiprocessing's under the system's temp dir instead, before anything asks it."""
    saved = tempfile.tempdir
    tempfile.tempdir = None  # meanwhile another thread's temp file lands in the system's: harmless
    try:
        multiprocessing.util.get_temp_dir()  # made once per process, kept, removed at exit
    finally:
        tempfile.tempdir = saved


def warm() -> None:
    """Start the forkserver and one worker now, in the background: the first C-FIND
    would otherwise wait for them (the clients' imports, about a second)."""
    threading.Thread(target=lambda: executor().submit(os.getpid), name="cfind-warm", daemon=True).start()


def discard(broken: Executor) -> None:
    """Forget ``broken`` (a worker died: a ProcessPoolExecutor then takes no more work);
    the next :func:`executor` makes a new pool."""
    global _executor
    with _lock:
        if _executor is broken:
            _executor = None
    broken.shutdown(wait=False, cancel_futures=True)


def _start_worker(log_level: int, log_format: logs.LogFormat) -> None:
    from shared.dicom import reactor

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    logs.configure(log_level, log_format, process_label="cfind", force=True)
    reactor.install()
