"""Paired runs: axiom-flow of two checkouts, alternating, on the same instances; for
telling a change's cost from the machine's drift, which moves single runs by 10% or more.

    git worktree add --detach /tmp/before <rev>
    .venv/bin/python bench/pairs.py /tmp/before . [--bench route|ingest] [--pairs 3] [--count 500]

Each pair runs one axiom-flow run of ``bench/route.py`` (three ``set`` actions, forward
by C-STORE to a storescp) or ``bench/ingest.py`` (one association into serve, delivered
to a folder) against each checkout: this tree's benchmark code starts ``axiom-flow
serve`` in the checkout, so the server runs the checkout's code (the same virtual
environment serves both). The order alternates from pair to pair. Every run checks what arrived, as the
two benchmarks do. Printed per run: seconds until done, inst/s and the CPU seconds
axiom-flow's processes used; then the medians of each checkout and the mean of the
paired differences.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import bench_arguments, bench_workdir, parse_bench_arguments  # noqa: E402
from tests.support.dicomgen import make_ct_study  # noqa: E402

# One run in a child process: this tree's benchmark code, serving the checkout's code
# (``axiom-flow serve`` starts in the checkout, so ``-m shared.cli`` imports its code).
ONE_RUN = """
import json, sys
from pathlib import Path
kind, work, run, checkout = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
from tests.support import procs
procs.REPO = checkout
files = sorted((work / "input").glob("*.dcm"))
if kind == "route":
    from bench import route
    r = route.run_axiom(work, route.Source(files), run, 2, 600.0)
    seconds = r["s"]
else:
    from pydicom import dcmread
    from bench import ingest
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    r = ingest.run_axiom(work, files, uids, 131072, run, 600.0, None)
    seconds = r["ingest_s"]
print(json.dumps({"s": seconds, "cpu_s": r.get("cpu_s")}))
"""


def one_run(checkout: Path, kind: str, work: Path, run: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", ONE_RUN, kind, str(work), str(run), str(checkout)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: run {run} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe(checkout: Path) -> str:
    rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return rev.stdout.strip() or str(checkout)


def main(argv: list[str] | None = None) -> int:
    ap = bench_arguments(__doc__, repeat=3, what="checkout")
    ap.add_argument("before", type=Path, help="checkout of the code before (a git worktree)")
    ap.add_argument("after", type=Path, help="checkout of the code after")
    ap.add_argument("--bench", choices=("route", "ingest"), default="route")
    ap.add_argument("--pairs", type=int, default=3, help="pairs of runs (default 3)")
    args = parse_bench_arguments(ap, argv)
    checkouts = [args.before.resolve(), args.after.resolve()]
    names = [describe(c) for c in checkouts]
    with bench_workdir(args, "axiom-bench-pairs-") as work:
        make_ct_study(work / "input", args.count)
        print(f"{args.bench}: {args.count} instances, {args.pairs} pairs; before {names[0]}, after {names[1]}")
        runs: dict[int, list[dict]] = {0: [], 1: []}
        for pair in range(args.pairs):
            for which in ((0, 1) if pair % 2 == 0 else (1, 0)):
                r = one_run(checkouts[which], args.bench, work, pair * 2 + which)
                runs[which].append(r)
                print(f"  pair {pair + 1}: {names[which]:>10} {r['s']:6.2f}s {args.count / r['s']:7.1f} inst/s"
                      f"  CPU {r['cpu_s']:.1f}s", flush=True)
        for which in (0, 1):
            med = statistics.median(r["s"] for r in runs[which])
            print(f"{names[which]:>10} median {med:.2f}s {args.count / med:.1f} inst/s, "
                  f"CPU median {statistics.median(r['cpu_s'] for r in runs[which]):.1f}s")
        for key, what in (("s", "time"), ("cpu_s", "CPU")):
            diffs = [(a[key] - b[key]) / b[key] for b, a in zip(runs[0], runs[1])]
            print(f"after vs before, mean of the paired {what} differences: {statistics.mean(diffs) * 100:+.1f}% "
                  f"(per pair: {' '.join(f'{d * 100:+.1f}%' for d in diffs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
