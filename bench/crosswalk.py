"""Crosswalk benchmark: lookups per second from database maps, and the latency a
crosswalk rule adds to each instance in the embedded runtime.

    TCP_NODELAY=1 .venv/bin/python bench/crosswalk.py [--rows 100000] [--keys 1000] [--lookups 20000]
        [--threads 1,4] [--repeat 5] [--databases postgresql,mariadb] [--count 100] [--rounds 2]

A throwaway PostgreSQL (and MariaDB) server from the Debian packages
(tests/support/databases.py) is loaded with a map of ``--rows`` rows
``(issuer, mrn) -> research_id``, primary key ``(issuer, mrn)``. Then:

1. **lookups, warm**: :class:`shared.adapters.crosswalk_databases.DatabaseCrosswalk`
   over that map with its cache on (``cache_ttl_s`` 3600); the same ``--keys`` keys,
   each looked up once beforehand, are looked up ``--lookups`` times in all by each
   thread count of ``--threads`` (the threads share one crosswalk, as the stage's
   workers do).
2. **lookups, cold**: the same with ``cache_ttl_s: 0``: every lookup is one SELECT over
   the source's pooled connections (``pool_size`` = the most threads, connections
   opened before the timing), each thread on its own distinct keys, ``--cold-lookups``
   in all. **driver** is the reference: the same SELECT and keys straight through the
   DB-API driver (psycopg, PyMySQL) on one open connection per thread, no SQLAlchemy,
   no pool.
3. **per instance** (``--count`` > 0): ``axiom-flow serve`` is started once per variant
   and round, with one rule writing PatientID and a flat ``filesystem`` destination
   (``{SOPInstanceUID}.dcm``). Variants: ``set`` (a constant, no lookup),
   ``crosswalk-memory`` (an in-memory map keyed by PatientID) and
   ``crosswalk-postgresql`` (the database map, keys IssuerOfPatientID and PatientID,
   cache on but every instance a different patient, so each one is a query). The same
   ``--count`` small CT instances (64 x 64, one patient each) are sent one at a time,
   each by its own dcmtk ``storescu`` association; an instance's time runs from
   storescu's "Sending Store Request" line to the file's appearance in the destination
   (polled every millisecond), and the next is sent once it arrived. ``--warmup``
   instances of other patients go first, untimed (config load, the pool's first
   connection). Only configuration, storescu and the destination folder are used, so
   whatever stages the runtime chains for a crosswalk rule are inside the figure.
   Every delivered file must hold the expected PatientID.

Lookup rows: ``lookups db cache threads n median min max`` (lookups per second over
``--repeat`` runs) and the microseconds per lookup of the median run. Per-instance
rows: median, p95, min and max in ms over every round, the median C-STORE response
time (``stored``), and the median's difference to ``set``. The load average is
printed before and after. Every server and temp dir is removed on exit, Ctrl-C too.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.databases import MariaDBServer, PostgresServer  # noqa: E402
from tests.support.dicomgen import make_ct_study  # noqa: E402
from tests.support.procs import DCMTK_ENV, AxiomServer, require  # noqa: E402

TABLE, ISSUERS = "mrn_map", ("HOSP-A", "HOSP-B", "HOSP-C", "HOSP-D")
KINDS = {"postgresql": PostgresServer, "mariadb": MariaDBServer}
SOURCE_TYPES = {"postgresql": "postgresql", "mariadb": "mysql"}


def row(n: int) -> tuple[str, str, str]:
    """Row ``n`` of the map: issuer, MRN (unique on its own too), research id."""
    return ISSUERS[n % len(ISSUERS)], f"MRN{n:07d}", f"R-{n:07d}"


def load_map(server, rows: int) -> float:
    """Create and fill the map table; returns the seconds it took."""
    import sqlalchemy

    started = time.perf_counter()
    engine = sqlalchemy.create_engine(server.url())
    meta = sqlalchemy.MetaData()
    mrn_map = sqlalchemy.Table(TABLE, meta, sqlalchemy.Column("issuer", sqlalchemy.String(64), primary_key=True),
                               sqlalchemy.Column("mrn", sqlalchemy.String(64), primary_key=True),
                               sqlalchemy.Column("research_id", sqlalchemy.String(64), nullable=False))
    meta.create_all(engine)
    with engine.begin() as conn:
        for start in range(0, rows, 10000):
            conn.execute(mrn_map.insert(), [dict(zip(("issuer", "mrn", "research_id"), row(n)))
                                            for n in range(start, min(rows, start + 10000))])
    with engine.connect() as conn:
        if server.driver.startswith("postgresql"):
            conn.execute(sqlalchemy.text(f"ANALYZE {TABLE}"))
        assert conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {TABLE}")).scalar() == rows
    engine.dispose()
    return time.perf_counter() - started


def server_version(server) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(server.url())
    with engine.connect() as conn:
        version = conn.execute(sqlalchemy.text("SELECT version()")).scalar()
    engine.dispose()
    return version.split(" on ")[0].split(",")[0]


def source_doc(kind: str, server, pool_size: int) -> dict:
    return {"id": "mpi", "type": SOURCE_TYPES[kind], "host": "127.0.0.1", "port": server.port,
            "database": server.database, "user": server.user, "password": "env:MPI_PASSWORD",
            "pool_size": pool_size}


def map_doc(cache_ttl_s: float, cache_size: int = 10000) -> dict:
    return {"id": "research", "source": "mpi", "table": TABLE, "keys": ["issuer", "mrn"], "value": "research_id",
            "on_miss": "fail", "cache_ttl_s": cache_ttl_s, "cache_size": cache_size}


def make_crosswalk(kind: str, server, *, cache_ttl_s: float, cache_size: int, pool_size: int):
    from shared.adapters.crosswalk_databases import DatabaseCrosswalk
    from shared.adapters.secrets import LocalSecrets
    from shared.config import AppConfig

    config = AppConfig.model_validate({"crosswalk_sources": [source_doc(kind, server, pool_size)],
                                       "crosswalks": [map_doc(cache_ttl_s, cache_size)]})
    return DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources,
                             LocalSecrets({"MPI_PASSWORD": server.password}))


def timed_lookups(connect, key_lists: list[list[int]]) -> float:
    """Look up every key of ``key_lists[t]`` in thread ``t``, all threads started
    together, through ``connect()`` (called in each thread before the start: a
    ``lookup(issuer, mrn)`` function and a function that closes what it opened);
    checks every answer; returns the wall clock seconds."""
    barrier = threading.Barrier(len(key_lists) + 1)
    errors: list[BaseException] = []

    def work(numbers: list[int]) -> None:
        keys = [row(n) for n in numbers]
        lookup, close = connect()
        barrier.wait()
        try:
            for issuer, mrn, research_id in keys:
                if lookup(issuer, mrn) != research_id:
                    raise AssertionError(f"wrong answer for row {mrn}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            close()

    workers = [threading.Thread(target=work, args=(numbers,), daemon=True) for numbers in key_lists]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def through(crosswalk):
    """``timed_lookups``' connect for the crosswalk (shared by every thread)."""
    return lambda: ((lambda issuer, mrn: crosswalk.lookup("research", (issuer, mrn))), lambda: None)


def through_driver(server):
    """``timed_lookups``' connect for the reference: one DB-API connection per thread
    (psycopg or PyMySQL, both ``%s`` placeholders), the same SELECT, no SQLAlchemy."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server.url(), poolclass=sqlalchemy.pool.NullPool)
    sql = f"SELECT research_id FROM {TABLE} WHERE issuer = %s AND mrn = %s LIMIT 1"

    def connect():
        conn = engine.raw_connection()
        cursor = conn.cursor()

        def lookup(issuer: str, mrn: str) -> str | None:
            cursor.execute(sql, (issuer, mrn))
            found = cursor.fetchone()
            return found[0] if found else None

        return lookup, conn.close

    return connect


def lookup_rows(kind: str, server, args, rng: random.Random) -> list[str]:
    """The warm, cold and driver lookup figures of one database, one printed row each."""
    lines = []
    pool = max(args.threads)
    warm_keys = rng.sample(range(args.rows), args.keys)
    for cache in ("on", "off", "driver"):
        crosswalk = None
        if cache == "driver":
            connect = through_driver(server)
        else:
            crosswalk = make_crosswalk(kind, server, cache_ttl_s=3600 if cache == "on" else 0,
                                       cache_size=max(args.keys, 1), pool_size=pool)
            connect = through(crosswalk)
            # untimed: fill the cache (warm) or open the pool's connections (cold)
            timed_lookups(connect, [warm_keys[t::pool] for t in range(pool)] if cache == "on"
                          else [warm_keys[t:t + 5] for t in range(pool)])
        try:
            for threads in args.threads:
                n = args.lookups if cache == "on" else args.cold_lookups
                rates = []
                for _ in range(args.repeat):
                    if cache == "on":  # every thread cycles over the same warm keys
                        lists = [[warm_keys[(t * 7919 + i) % len(warm_keys)] for i in range(n // threads)]
                                 for t in range(threads)]
                    else:  # distinct keys: nothing a cache could answer
                        numbers = rng.sample(range(args.rows), n - n % threads)
                        lists = [numbers[t::threads] for t in range(threads)]
                    rates.append(sum(map(len, lists)) / timed_lookups(connect, lists))
                median = statistics.median(rates)
                lines.append(f"lookups  {kind:<11} {cache:<6} {threads:>7} {n:>6} {median:>10.0f} {min(rates):>8.0f} "
                             f"{max(rates):>8.0f} {1e6 * threads / median:>9.1f}")
                print(lines[-1], flush=True)
        finally:
            if crosswalk is not None:
                crosswalk.close()
    return lines


# --- per instance through axiom-flow serve ------------------------------------------------

VARIANTS = ("set", "crosswalk-memory", "crosswalk-postgresql")


def serve_config(variant: str, patients: list[int], pg_source: dict | None) -> dict:
    """One rule writing PatientID (see the module docstring), a flat filesystem destination."""
    if variant == "set":
        action = {"action": "set", "tag": "PatientID", "value": "R-0000000"}
    else:
        action = {"action": "crosswalk", "tag": "PatientID", "table": "research", "on_missing": "fail"}
    config = {
        "destinations": [{"id": "out", "type": "filesystem", "path": "out", "name_template": "{SOPInstanceUID}.dcm"}],
        "rulesets": [{"id": "main", "rules": [{"id": "pseudonymize", "actions": [action], "destinations": ["out"]}]}],
    }
    if variant == "crosswalk-memory":
        config["crosswalks"] = [{"id": "research", "on_miss": "fail",
                                 "entries": {row(n)[1]: row(n)[2] for n in patients}}]
    elif variant == "crosswalk-postgresql":
        action["key_tags"] = ["IssuerOfPatientID", "PatientID"]
        config["crosswalk_sources"] = [pg_source]
        config["crosswalks"] = [map_doc(300)]
    return config


def make_instances(folder: Path, patients: list[int]) -> list[tuple[Path, str, int]]:
    """One small CT per patient number: (file, SOP Instance UID, patient number)."""
    from pydicom import dcmread

    made = []
    for n in patients:
        (path,) = make_ct_study(folder / str(n), 1, rows=64, columns=64, patient_id=row(n)[1])
        ds = dcmread(path)
        ds.IssuerOfPatientID = row(n)[0]
        ds.save_as(path, enforce_file_format=True)
        made.append((path, ds.SOPInstanceUID, n))
    return made


def send_one(port: int, path: Path, arrival: Path, timeout: float,
             failed: Callable[[], bool]) -> tuple[float, float] | None:
    """Send ``path`` with its own storescu; (seconds from the C-STORE request to the
    file at ``arrival``, to the C-STORE response), or None if it did not arrive in
    ``timeout`` seconds or ``failed()`` (asked every 0.25 s) said it never will."""
    proc = subprocess.Popen([require("storescu"), "-v", "-aet", "BENCH", "-aec", "AXIOM", "127.0.0.1", str(port),
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    lines: list[tuple[float, str]] = []
    sent = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter(), line))
            if "Sending Store Request" in line:
                sent.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not sent.wait(timeout):
            raise RuntimeError("storescu did not send: " + "".join(line for _, line in lines[-10:]))
        started = next(t for t, line in lines if "Sending Store Request" in line)
        deadline, ask = started + timeout, started + 0.25
        while not arrival.exists():
            now = time.perf_counter()
            if now > deadline:
                return None
            if now > ask:
                if failed():
                    return None
                ask = now + 0.25
            time.sleep(0.001)
        arrived = time.perf_counter()
        if proc.wait(timeout) != 0:
            raise RuntimeError("storescu failed: " + "".join(line for _, line in lines[-10:]))
        reader.join(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    responses = [(t, line) for t, line in lines if "Received Store Response" in line]
    if not responses or "(Success)" not in responses[0][1]:
        raise RuntimeError("the C-STORE was not answered Success: " + "".join(line for _, line in lines[-10:]))
    return arrived - started, responses[0][0] - started


def run_variant(variant: str, work: Path, tag: str, instances, warmup, pg_source: dict | None,
                timeout: float) -> tuple[list[float], list[float]] | str:
    """One server with ``variant``'s config: the warm-up, then every instance timed.
    Returns (latencies, C-STORE response times), or why instances did not arrive."""
    from pydicom import dcmread

    patients = [n for _, _, n in warmup + instances]
    data = work / f"serve-{tag}"
    out = data / "out"
    env = {"MPI_PASSWORD": pg_source["_password"]} if pg_source else {}
    source = {k: v for k, v in pg_source.items() if not k.startswith("_")} if pg_source else None
    latencies, stored = [], []
    with AxiomServer(data, serve_config(variant, patients, source), env=env) as server:
        for k, (path, uid, _) in enumerate(warmup + instances):
            timing = send_one(server.dicom_port, path, out / f"{uid}.dcm", timeout, lambda: bool(server.exceptions()))
            if timing is None:
                records = server.exceptions()
                reasons = sorted({f"{r.get('stage')}: {r.get('reason')}" for r in records})
                return (f"not delivered ({len(records)} exception record(s): "
                        f"{'; '.join(reasons)[:300]})")
            if k >= len(warmup):
                latencies.append(timing[0])
                stored.append(timing[1])
            time.sleep(0.02)  # let the stages settle before the next instance
        server.wait_idle()
    for _, uid, n in instances:
        expected = "R-0000000" if variant == "set" else row(n)[2]
        got = dcmread(out / f"{uid}.dcm", stop_before_pixels=True).PatientID
        if got != expected:
            raise AssertionError(f"{variant}: SOP Instance {uid} arrived with PatientID {got!r}, not {expected!r}")
    shutil.rmtree(data, ignore_errors=True)
    return latencies, stored


def per_instance_rows(work: Path, args, pg, rng: random.Random) -> tuple[list[str], bool]:
    patients = rng.sample(range(args.rows), args.count + args.warmup)
    warmup = make_instances(work / "send", patients[:args.warmup])
    instances = make_instances(work / "send", patients[args.warmup:])
    pg_source = {**source_doc("postgresql", pg, 4), "_password": pg.password} if pg else None
    results: dict[str, tuple[list[float], list[float]] | str] = {}
    for rnd in range(args.rounds):
        order = args.variants if rnd % 2 == 0 else args.variants[::-1]  # alternate: drift hits every variant alike
        for variant in order:
            if isinstance(results.get(variant), str):
                continue
            got = run_variant(variant, work, f"{variant}-{rnd}", instances, warmup, pg_source, args.timeout)
            if isinstance(got, str):
                results[variant] = got
                continue
            before = results.setdefault(variant, ([], []))
            before[0].extend(got[0])
            before[1].extend(got[1])
    lines, ok = [], True
    base = results.get("set")
    for variant in args.variants:
        got = results[variant]
        if isinstance(got, str):
            lines.append(f"instance {variant:<21} {got}")
            ok = False
            continue
        ms = sorted(t * 1000 for t in got[0])
        median = statistics.median(ms)
        diff = (f"{median - statistics.median(t * 1000 for t in base[0]):+9.1f}"
                if isinstance(base, tuple) and variant != "set" else f"{'':>9}")
        lines.append(f"instance {variant:<21} {len(ms):>5} {median:>8.1f} {ms[max(0, int(len(ms) * 0.95) - 1)]:>8.1f} "
                     f"{ms[0]:>8.1f} {ms[-1]:>8.1f} {statistics.median(got[1]) * 1000:>8.1f} {diff}")
    return lines, ok


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100000, help="rows in the map table")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys of the warm-cache runs")
    parser.add_argument("--lookups", type=int, default=20000, help="lookups per warm-cache run")
    parser.add_argument("--cold-lookups", type=int, default=2000, help="lookups per cold run (one query each)")
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4],
                        help="thread counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="runs per lookup figure (median, min, max)")
    parser.add_argument("--databases", type=lambda s: s.split(","), default=["postgresql", "mariadb"],
                        help="postgresql and/or mariadb, comma-separated")
    parser.add_argument("--skip-lookups", action="store_true", help="only the per-instance runs")
    parser.add_argument("--count", type=int, default=100, help="timed instances per serve run; 0: no serve runs")
    parser.add_argument("--warmup", type=int, default=5, help="untimed instances first in each serve run")
    parser.add_argument("--rounds", type=int, default=2, help="serve runs per variant, alternating")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                        help=f"per-instance variants, comma-separated, of {','.join(VARIANTS)}")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds an instance may take to arrive (an exception record ends the wait sooner)")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    if unknown := set(args.databases) - set(KINDS):
        parser.error(f"unknown database(s): {', '.join(sorted(unknown))}")
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    if args.count and "postgresql" not in args.databases and "crosswalk-postgresql" in args.variants:
        parser.error("the crosswalk-postgresql variant needs postgresql in --databases")
    if args.keys > args.rows or args.count + args.warmup > args.rows:
        parser.error("--keys and --count + --warmup must not exceed --rows")

    # SIGTERM ends the run as Ctrl-C does: through the finally blocks that stop the servers
    # (SIGINT too when started in the background, which inherits it ignored)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus; load before: {load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-crosswalk-"))
    servers: dict = {}
    ok = True
    try:
        for kind in args.databases:
            servers[kind] = KINDS[kind]()
            servers[kind].start()
            seconds = load_map(servers[kind], args.rows)
            print(f"{kind}: {server_version(servers[kind])}, {args.rows} rows loaded in {seconds:.1f} s", flush=True)
        if not args.skip_lookups:
            print(f"{'':8} {'db':<11} {'cache':<6} {'threads':>7} {'n':>6} {'median/s':>10} {'min/s':>8} {'max/s':>8} "
                  f"{'us/lookup':>9}", flush=True)
        for kind in args.databases if not args.skip_lookups else ():
            lookup_rows(kind, servers[kind], args, rng)
        if args.count:
            print(f"{'':8} {'variant':<21} {'n':>5} {'median':>8} {'p95':>8} {'min':>8} {'max':>8} {'stored':>8} "
                  f"{'vs set':>9}   (ms)", flush=True)
            lines, ok = per_instance_rows(work, args, servers.get("postgresql"), rng)
            for line in lines:
                print(line, flush=True)
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(work, ignore_errors=True)
        print(f"load after: {load()}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
