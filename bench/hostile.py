"""Hostile-input run: many fuzzed files and abusive connections into one ``axiom-flow serve``.

    .venv/bin/python bench/hostile.py [--count 10000] [--connections 1000] [--seed 11]

The corpus is tests/support/fuzz.py's (every mutation kind in turn, seeded); each file
goes once over C-STORE and once over STOW-RS, while ``--connections`` abusive
connections hit the DICOM and HTTP ports at the same time (``--concurrency`` at
once): bare TCP connects that send nothing, random bytes, an A-ASSOCIATE-RQ and then
silence, HTTP headers that never end, STOW-RS with a Content-Length of 3 GB and a
3-byte body, and requests with a foreign Host. Traffic goes to 127.0.0.1 only and
every loop is bounded in count and time.

Printed: tried (files x channels), answered Success, delivered, quarantined, other
outcomes (each named), crashed (processes or threads that died: must be 0), the
abusive connections by what became of them, peak RSS of the server's processes (sum,
sampled every 0.5 s, and each one's VmHWM), threads/descriptors before and after,
and the wall clock. Exits non-zero when something crashed, when the server does not
answer C-ECHO or /healthz afterwards, or when an instance answered Success is
neither delivered nor quarantined with a record.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.support import fuzz  # noqa: E402
from tests.support.procs import AxiomServer  # noqa: E402

KEY = "bench-hostile-key-0123456789"
ABUSE_KINDS = ("tcp_silent", "dicom_garbage", "associate_then_silence", "http_slow_headers", "http_huge_length",
               "http_foreign_host")


def associate_rq(called: str = "AXIOM", calling: str = "ABUSER") -> bytes:
    """A minimal A-ASSOCIATE-RQ (PS3.8 9.3.2): Verification, Implicit VR Little Endian."""
    def item(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(payload)) + payload

    app_context = item(0x10, b"1.2.840.10008.3.1.1.1")
    syntax = item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2")
    presentation = item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + syntax)
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + b"\0" * 32
            + app_context + presentation + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def abuse_once(kind: str, dicom_port: int, http_port: int, rng: random.Random) -> str:
    """One abusive connection; what became of it."""
    port = dicom_port if kind in ("tcp_silent", "dicom_garbage", "associate_then_silence") else http_port
    hold = rng.uniform(0.5, 3.0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if kind == "dicom_garbage":
                sock.sendall(rng.randbytes(rng.randint(1, 8192)))
            elif kind == "associate_then_silence":
                sock.sendall(associate_rq())
            elif kind == "http_slow_headers":
                sock.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                deadline = time.monotonic() + hold
                while time.monotonic() < deadline:
                    sock.sendall(b"X-A: b\r\n")
                    time.sleep(0.5)
                return "slow headers sent, then closed by us"
            elif kind == "http_huge_length":
                sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/dicom"
                             b"\r\nContent-Length: 3000000000\r\n\r\nabc")
                answer = sock.recv(64)
                return f"answered {answer[9:12].decode(errors='replace')}" if answer else "closed without an answer"
            elif kind == "http_foreign_host":
                sock.sendall(b"GET /api/v1/exceptions HTTP/1.1\r\nHost: rebind.attacker.example\r\n\r\n")
                answer = sock.recv(64)
                return f"answered {answer[9:12].decode(errors='replace')}" if answer else "closed without an answer"
            sock.settimeout(hold)
            try:
                data = sock.recv(64)
                return "answered and closed" if data else "closed by the server"
            except TimeoutError:
                return "held open by us, then closed"
    except OSError as exc:
        return f"connection error {type(exc).__name__}"


def abuse(dicom_port: int, http_port: int, count: int, concurrency: int, seed: int, results: Counter) -> None:
    rng = random.Random(seed)
    plan = [(ABUSE_KINDS[i % len(ABUSE_KINDS)], random.Random(rng.random())) for i in range(count)]
    with ThreadPoolExecutor(concurrency) as pool:
        for kind, outcome in zip([k for k, _ in plan],
                                 pool.map(lambda p: abuse_once(p[0], dicom_port, http_port, p[1]), plan)):
            results[f"{kind}: {outcome}"] += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10000, help="fuzzed files (each sent over C-STORE and STOW-RS)")
    ap.add_argument("--connections", type=int, default=1000, help="abusive connections")
    ap.add_argument("--concurrency", type=int, default=50, help="abusive connections at once")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workdir", type=Path, default=None, help="where the temp dir goes")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="axiom-bench-hostile-", dir=args.workdir))
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"load average before: {os.getloadavg()}")
    failed = False
    try:
        t0 = time.monotonic()
        cases = fuzz.build_corpus(work / "corpus", args.count, seed=args.seed)
        print(f"corpus: {len(cases)} files in {time.monotonic() - t0:.1f} s; kinds: "
              f"{dict(Counter(c.kind for c in cases))}")
        config = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
                  "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
                  "stow": {"api_keys": "env:AXIOM_BENCH_STOW_KEYS"}}
        abused: Counter = Counter()
        with AxiomServer(work / "data", config, env={"AXIOM_BENCH_STOW_KEYS": KEY}) as server:
            children = server.status()["pipeline_processes"]
            result = fuzz.run(server, cases, work / "send", key=KEY, drain_timeout=3600,
                              during=lambda: abuse(server.dicom_port, server.http_port, args.connections,
                                                   args.concurrency, args.seed, abused))
            time.sleep(15)  # let timed-out connections and threads go before the "after" figures
            after = fuzz.process_tree(server.proc.pid, children)
            echo_ok = fuzz.echo(server.dicom_port)
            health = httpx.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=10).status_code
            alive = server.proc.poll() is None
            children_after = server.status()["pipeline_processes"]
        crash_lines = fuzz.crashes_in_log(server.log_path)
        crashed = (0 if alive else 1) + len(set(children) - set(children_after)) + len(crash_lines)
        answers = result.answers
        success = sum(a.success for a in answers)
        unanswered = Counter(f"{a.channel}: {a.detail[:80]}" for a in answers if not a.answered)
        problems = Counter(kind for kind, _ in result.outcome.problems)

        print(f"tried: {len(answers)} ({len(cases)} files x C-STORE and STOW-RS)")
        print(f"answered Success: {success} (C-STORE {sum(a.success for a in answers if a.channel == 'cstore')}, "
              f"STOW-RS {sum(a.success for a in answers if a.channel == 'stow')})")
        print(f"answered refused: {sum(a.answered and not a.success for a in answers)}; not answered: "
              f"{sum(unanswered.values())} {dict(unanswered.most_common(10))}")
        print(f"delivered: {result.outcome.delivered}")
        print(f"quarantined: {result.outcome.quarantined}")
        print(f"neither (by mutation kind): {dict(problems)}")
        for kind, message in result.outcome.problems[:15]:
            print(f"  {kind}: {message[:300]}")
        print(f"crashed: {crashed} {crash_lines[:5]}")
        print(f"abusive connections: {sum(abused.values())}")
        for what, n in sorted(abused.items()):
            print(f"  {n:5d} {what}")
        print(f"peak RSS (sum of processes, sampled): {result.peak_rss_kb / 1024:.0f} MB; VmHWM per process: "
              f"{ {p: round(s['hwm_kb'] / 1024) for p, s in after.items()} } MB")
        print("baseline -> after (rss MB, threads, fds): "
              + "; ".join(f"{p}: {b['rss_kb'] // 1024}->{after.get(p, {}).get('rss_kb', 0) // 1024}, "
                          f"{b['threads']}->{after.get(p, {}).get('threads')}, {b['fds']}->{after.get(p, {}).get('fds')}"
                          for p, b in result.baseline.items()))
        print(f"C-ECHO afterwards: {'ok' if echo_ok else 'NO ANSWER'}; /healthz: {health}")
        print(f"wall clock: {result.seconds:.0f} s (send + drain)")
        print(f"load average after: {os.getloadavg()}")
        failed = crashed > 0 or not echo_ok or health != 200 or bool(result.outcome.problems)
        print(f"hostile_crashed={crashed}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
