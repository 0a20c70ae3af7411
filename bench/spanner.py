"""Spanner latency against its slowest source, and 1000 concurrent spanning queries.

    TCP_NODELAY=1 .venv/bin/python bench/spanner.py [--queries 100] [--delay-ms 0,25,50,100] [--load 1000]

The eight Orthanc servers of ``tests/support/spanner_bed.py`` (``pacs-1``..``pacs-4`` asked
by QIDO-RS, ``pacs-5``..``pacs-8`` by C-FIND, ``pacs-8``, "the slow source", through the
bed's delaying proxy) behind one ``axiom-flow serve`` whose config holds the eight
sources, the spanner ``all`` over them and one spanner ``solo-<source>`` per source, all
with ``cache_ttl_s: 0``. Every query goes to ``GET /api/v1/spanner/qido/studies?
spanner_config_id=...`` with an admin API key.

1. **sequential**, once per ``--delay-ms`` (the proxy's delay each way, per chunk: 0
   makes the slow source as fast as the others, so "the slowest" is whichever server
   the two cores served last): ``--queries`` rounds after ``--warmup`` untimed ones;
   each round asks ``all`` once and every ``solo-`` spanner once, in a shuffled order
   (seeded), one at a time over one keep-alive connection. So the spanning query and
   each source alone go through the same HTTP path, engine and client code,
   interleaved under the same load. Per target: p50, p95, min, max (ms, client side).
   The figure of the goal is ``all``'s p95 minus the largest per-source p95 (the
   slowest source). Also from the ``X-Spanner-Status`` header of each answer of ``all``
   and of the slowest source alone: the slowest source's time inside the fan-out and
   what the query took beyond it (``beyond``: HTTP, authentication, the config,
   merging, the answer's JSON). A table of the figure per delay ends the phase.
2. **load**: ``--load`` queries to ``all`` started at once from one
   ``httpx.AsyncClient`` allowing ``--load`` connections (timeout ``--client-timeout``),
   the slow source delayed ``--load-delay-ms``. Throughput (queries / wall clock from
   the first send to the last answer), p50, p95, max, and errors by kind (HTTP status,
   exception type, or ``partial``: a 200 with a ``Warning``, a source missing). The CPU
   seconds of serve (its C-FIND worker processes included), of the Orthancs and of this
   process (client and the proxy) during the load are printed.

Every answer is checked: 200, no ``Warning``, every source ``ok``, as many study rows as
the bed holds for the target. The load average is printed before and after. serve,
the Orthancs and the proxy are stopped and the temp dir removed on exit (Ctrl-C too)
unless ``--keep``. The last line is ``spanner_p95_over_slowest_ms=<ms>``, at the last
delay of ``--delay-ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.procs import AxiomServer  # noqa: E402
from tests.support.spanner_bed import build_bed  # noqa: E402

ALL = "all"
DELAYS_MS = "0,25,50,100"  # one-way, each way: 0, then round trips of 50, 100 and 200 ms
TICKS = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


def row(label: str, values: list[float]) -> str:
    return (f"{label:<28} {len(values):>5} {pct(values, 0.5):>8.1f} {pct(values, 0.95):>8.1f} "
            f"{min(values):>8.1f} {max(values):>8.1f}")


HEADER = f"{'':<28} {'n':>5} {'p50':>8} {'p95':>8} {'min':>8} {'max':>8}   (ms)"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / TICKS
        todo.extend(children.get(p, []))
    return total


def config_for(bed, timeout_s: float) -> dict:
    spanners = [{"id": ALL, "sources": [{"source": s["id"], "priority": n} for n, s in enumerate(bed.sources)],
                 "timeout_s": timeout_s, "cache_ttl_s": 0}]
    spanners += [{"id": f"solo-{s['id']}", "sources": [{"source": s["id"]}], "timeout_s": timeout_s,
                  "cache_ttl_s": 0} for s in bed.sources]
    return {"sources": bed.sources, "spanners": spanners}


def expected_rows(bed) -> dict[str, int]:
    return {ALL: len(bed.studies), **{f"solo-{sid}": len(held) for sid, held in bed.truth.items()}}


def check(target: str, status: int, headers, rows: int, expected: dict[str, int]) -> str | None:
    """None if the answer is complete and right, else what is wrong with it (its kind)."""
    if status != 200:
        return f"HTTP {status}"
    if "warning" in headers:
        return "partial"
    if any(s["state"] != "ok" for s in json.loads(headers["x-spanner-status"])):
        return "source not ok"
    if rows != expected[target]:
        return "wrong row count"
    return None


def sequential_http(server: AxiomServer, targets: list[str], rounds: int, warmup: int, expected: dict[str, int],
                    seed: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per target the client-side ms of each query, and the ms of its slowest source
    inside the fan-out (from ``X-Spanner-Status``)."""
    shuffle = random.Random(seed)
    times: dict[str, list[float]] = {t: [] for t in targets}
    fan: dict[str, list[float]] = {t: [] for t in targets}
    with httpx.Client(base_url=server.api, headers=server.auth, timeout=60) as http:
        for n in range(warmup + rounds):
            order = list(targets)
            shuffle.shuffle(order)
            for target in order:
                started = time.perf_counter()
                answer = http.get("/spanner/qido/studies", params={"spanner_config_id": target})
                ms = (time.perf_counter() - started) * 1000
                bad = check(target, answer.status_code, answer.headers,
                            len(answer.json()) if answer.status_code == 200 else 0, expected)
                if bad:
                    raise SystemExit(f"{target}: {bad}: {answer.headers.get('warning', '')} {answer.text[:300]}")
                if n < warmup:
                    continue
                times[target].append(ms)
                fan[target].append(max(s["ms"] for s in json.loads(answer.headers["x-spanner-status"])))
    return times, fan


async def load(server: AxiomServer, count: int, timeout: float, expected: dict[str, int]):
    """``count`` queries to ``all`` at once: (wall s, ms of the complete ones, errors
    by kind, ms of the slowest source inside each fan-out)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    latencies: list[float] = []
    crit: list[float] = []
    errors: Counter = Counter()
    missing: Counter = Counter()  # partial answers: which source, in what state, why
    async with httpx.AsyncClient(base_url=server.api, headers=server.auth, timeout=timeout, limits=limits) as http:
        async def one():
            started = time.perf_counter()
            try:
                answer = await http.get("/spanner/qido/studies", params={"spanner_config_id": ALL})
                rows = len(answer.json()) if answer.status_code == 200 else 0
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                return
            bad = check(ALL, answer.status_code, answer.headers, rows, expected)
            if bad:
                errors[bad] += 1
                if bad in ("partial", "source not ok"):
                    for s in json.loads(answer.headers["x-spanner-status"]):
                        if s["state"] != "ok":
                            missing[f"{s['source']} {s['state']}: {s['error']}"] += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)
            crit.append(max(s["ms"] for s in json.loads(answer.headers["x-spanner-status"])))

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        wall = time.perf_counter() - began
    return wall, latencies, errors, missing, crit


def _delays(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: milliseconds, comma-separated (e.g. {DELAYS_MS})") from None


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=100, help="timed sequential rounds per delay (100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (5)")
    parser.add_argument("--load", type=int, default=1000, help="concurrent queries, 0: skip (1000)")
    parser.add_argument("--client-timeout", type=float, default=300.0, help="per query under load, s (300)")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="the spanners' timeout_s (10)")
    parser.add_argument("--delay-ms", type=_delays, default=_delays(DELAYS_MS),
                        help=f"the slow source's proxy delays to run the sequential phase at, in turn ({DELAYS_MS}); "
                             "the last line is the last one's")
    parser.add_argument("--load-delay-ms", type=float, default=0.0, help="the slow source's delay under load (0)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    # SIGTERM and SIGINT (also when started in the background, where SIGINT is ignored)
    # end the run as Ctrl-C does: the finally below stops everything
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="bench-spanner-", dir=args.workdir))
    stoppables: list = []
    server: AxiomServer | None = None
    summary: float | None = None
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, TCP_NODELAY={os.environ.get('TCP_NODELAY')}")
    print(f"load before: {uptime()}", flush=True)
    try:
        started = time.perf_counter()
        bed = build_bed(workdir / "bed", stoppables)
        print(f"bed: {len(bed.sources)} Orthancs, {len(bed.studies)} studies, up in "
              f"{time.perf_counter() - started:.1f} s; slow source {bed.slow['id']}", flush=True)
        server = AxiomServer(workdir / "data", config_for(bed, args.timeout_s)).start()
        expected = expected_rows(bed)
        targets = list(expected)

        gaps: dict[float, tuple[float, float, str]] = {}
        for delay in args.delay_ms:
            bed.set_delay(delay / 1000)
            times, fan = sequential_http(server, targets, args.queries, args.warmup, expected, args.seed)
            solo = {t: v for t, v in times.items() if t != ALL}
            slowest = max(solo, key=lambda t: pct(solo[t], 0.95))
            gaps[delay] = (pct(times[ALL], 0.95), pct(solo[slowest], 0.95), slowest)
            print(f"\nsequential over HTTP, the slow source {bed.slow['id']} delayed {delay:g} ms each way: "
                  f"{args.queries} rounds (each: {ALL} + every source alone, shuffled); load average "
                  f"{os.getloadavg()[0]:.2f}")
            print(HEADER)
            for target in targets:
                print(row(target + (" (slowest)" if target == slowest else ""), times[target]))
            for target in (ALL, slowest):
                print(row(f"{target}: slowest source inside", fan[target]))
                print(row(f"{target}: beyond it", [ms - c for ms, c in zip(times[target], fan[target])]))
            print(f"spanner p95 {gaps[delay][0]:.1f} ms - slowest source p95 {gaps[delay][1]:.1f} ms "
                  f"({slowest}) = {gaps[delay][0] - gaps[delay][1]:+.1f} ms (goal <= +25)", flush=True)
        print("\nslow source delay (ms each way)   spanner p95   slowest source p95   difference")
        for delay, (spanned, alone, slowest) in gaps.items():
            print(f"{delay:>31g} {spanned:>13.1f} {alone:>20.1f} {spanned - alone:>+12.1f}  ({slowest})")
        spanned, alone, _ = gaps[args.delay_ms[-1]]
        summary = spanned - alone

        if args.load:
            bed.set_delay(args.load_delay_ms / 1000)
            pids = {"serve": server.proc.pid, **{sid: o.proc.pid for sid, o in bed.orthancs.items()}}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            own = os.times()
            print(f"\nload: {args.load} concurrent queries to {ALL} (one AsyncClient, {args.load} connections), "
                  f"the slow source delayed {args.load_delay_ms:g} ms; load average before: {os.getloadavg()[0]:.2f}",
                  flush=True)
            wall, latencies, errors, missing, crit = asyncio.run(
                load(server, args.load, args.client_timeout, expected))
            own_after = os.times()
            used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            ok = len(latencies)
            print(f"complete and right: {ok} of {args.load}; errors: {sum(errors.values())}")
            for kind, n in sorted(errors.items()):
                print(f"  {kind}: {n}")
            for what, n in sorted(missing.items()):
                print(f"  source missing from an answer: {what}: {n}")
            print(f"wall {wall:.2f} s, throughput {args.load / wall:.1f} queries/s (all answers), "
                  f"{ok / wall:.1f} complete queries/s")
            if latencies:
                print(HEADER)
                print(row("latency under load", latencies))
                print(row("slowest source inside", crit))
            orthanc_cpu = sum(v for k, v in used.items() if k != "serve")
            bench_cpu = (own_after.user + own_after.system) - (own.user + own.system)
            busiest = max((k for k in used if k != "serve"), key=used.get)
            print(f"cpu s during the load: serve {used['serve']:.1f} ({used['serve'] * 1000 / args.load:.1f} ms "
                  f"per query), 8 Orthancs {orthanc_cpu:.1f} (most: {busiest} {used[busiest]:.1f}), "
                  f"this process (client + proxy) {bench_cpu:.1f}")
    finally:
        if server is not None:
            server.stop()
        with ThreadPoolExecutor(len(stoppables) or 1) as pool:
            list(pool.map(lambda thing: thing.stop(), stoppables))
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"load after: {uptime()}")
    if summary is None:
        return 1
    print(f"spanner_p95_over_slowest_ms={summary:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
