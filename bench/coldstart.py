"""Cold start of the Cloud Functions entry modules (functions/main.py, api.py), per target.

    .venv/bin/python bench/coldstart.py [--runs 7] [--targets match,api]

Every measurement runs in a fresh interpreter (``python -X importtime`` aside, nothing
is shared between runs; the bytecode caches are warm, as in a deployed function after
its first start). Three figures, each the median, min and max over ``--runs`` runs:

* **import**: ``import main`` and ``import api`` with the bundle's layout on
  ``sys.path`` (functions/ and the repository root, as the bundle puts them next to
  ``shared/``), timed inside the child from just before the import. Under each, the
  same import of what the module takes from functions-framework alone (:data:`FRAMEWORK`:
  Flask, and Starlette for api.py): the platform's part of the figure, which Cloud Run
  loads before the entry module in any case.
* **ready**: as Cloud Run starts a function: from spawning the interpreter until
  functions-framework's ``create_app(target=..., source=functions/<its file>)``
  returned (interpreter start, functions-framework, the entry module and the app).
* **first call**: the imports the target's first call needs, timed in the ready child:
  the target is called once through the app with a real-shaped request (a Pub/Sub push
  CloudEvent, or a POST for the HTTP targets) without ``GOOGLE_CLOUD_PROJECT``, so it
  imports everything it uses and stops where it would build the Google clients
  (:func:`shared.runtime.gcp.build_ports` raises first), then imports the adapters
  whose clients ``build_ports`` would create (:data:`CLIENTS`), so every run ends with
  the same modules loaded wherever the code stopped. Client creation and the first RPCs
  are not in it. **ready + first call** is the cold start a first request pays.

Each figure is given as wall clock and as the child's CPU time (user + system; for
**ready**, since the interpreter started): on a shared machine the wall clock grows
with the load, the CPU time much less, so compare CPU times across runs made under
different loads. Also printed: the load average, and the modules of note that each
entry module's import loaded (numpy, pydicom, pynetdicom, grpc, google.cloud.*,
fastapi, pydantic, ...), from the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = REPO / "functions"
# The entry modules (functions/): the file each target is in, if not main.py
SOURCES = {"api": "api.py"}
# What each entry module takes from functions-framework: the platform's share of its import
FRAMEWORK = {"main": ("flask", "functions_framework"), "api": ("flask", "functions_framework", "functions_framework.aio")}
TARGETS = ("match", "crosswalk", "crosswalk_sync", "morph", "route", "dead_letter", "release_held", "poll",
           "ghc_ingest", "stow", "api")
BLOB = {"bucket": "ingest", "name": "1.2.3.dcm", "generation": "1"}
# What each CloudEvent target is pushed on its first call: a message it decodes, so the
# call goes on to the stage (and to the ports) as a real one would.
PUSHES = {
    "match": ({"bucket": "ingest", "name": "1.2.3.dcm"},
              {"eventType": "OBJECT_FINALIZE", "bucketId": "ingest", "objectId": "1.2.3.dcm", "objectGeneration": "1",
               "payloadFormat": "JSON_API_V1"}),
    "crosswalk": ({"blob": BLOB, "ingest": {}, "sop_instance_uid": "1.2.3"}, {}),
    "crosswalk_sync": ({}, {}),
    "morph": ({"blob": BLOB, "ingest": {}, "sop_instance_uid": "1.2.3"}, {}),
    "route": ({"sop_instance_uid": "1.2.3", "destination_id": "archive", "blob": BLOB, "source": BLOB, "ingest": {}}, {}),
    "dead_letter": ({"topic": "planned", "body": "{}", "attempts": 5}, {}),
    "release_held": ({}, {}),
    "poll": ({"source_id": "pacs"}, {}),
    "ghc_ingest": ("projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb/studies/1/series/2/instances/3", {}),
}
# The adapters build_ports creates clients from: the first call imports them too.
CLIENTS = ("shared.adapters.firestore", "shared.adapters.gcs", "shared.adapters.pubsub",
           "shared.adapters.secret_manager")
NOTED = ("numpy", "pydicom", "pynetdicom", "grpc", "google.cloud.firestore", "google.cloud.pubsub",
         "google.cloud.storage", "fastapi", "pydantic", "httpx", "flask", "starlette")

# One run in a fresh interpreter; argv: mode, target, the parent's spawn time (time.time()),
# the push for a CloudEvent target (JSON: data, attributes).
CHILD = r"""
import base64, json, sys, time
mode, target, spawned, push = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
sys.path[:0] = [{functions!r}, {repo!r}]
out = {{}}
if mode == "import":
    t, c = time.perf_counter(), time.process_time()
    __import__(target)
    out["import_ms"] = (time.perf_counter() - t) * 1000
    out["import_cpu_ms"] = (time.process_time() - c) * 1000
    out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in {roots!r} or m in {noted!r})
elif mode == "framework":
    t, c = time.perf_counter(), time.process_time()
    for name in {framework!r}[target]:
        __import__(name)
    out["framework_ms"] = (time.perf_counter() - t) * 1000
    out["framework_cpu_ms"] = (time.process_time() - c) * 1000
else:
    from functions_framework import create_app
    app = create_app(target=target, source={functions!r} + "/" + {sources!r}.get(target, "main.py"))
    out["ready_ms"] = (time.time() - spawned) * 1000
    out["ready_cpu_ms"] = time.process_time() * 1000
    t, c = time.perf_counter(), time.process_time()
    if target == "api":
        from starlette.testclient import TestClient
        status = TestClient(app, raise_server_exceptions=False).get("/api/v1/me").status_code
    elif target == "stow":
        status = app.test_client().post("/studies", data=b"", headers={{"Content-Type": "application/dicom"}}).status_code
    else:
        data = push[0] if isinstance(push[0], str) else json.dumps(push[0])
        message = {{"data": base64.b64encode(data.encode()).decode(), "messageId": "1", "attributes": push[1]}}
        body = {{"message": message,
                 "subscription": "projects/p/subscriptions/axiom-" + target}}
        event = {{"specversion": "1.0", "type": "google.cloud.pubsub.topic.v1.messagePublished",
                  "source": "//pubsub.googleapis.com/projects/p/topics/axiom-" + target, "id": "1",
                  "datacontenttype": "application/json", "data": body}}
        status = app.test_client().post("/", json=event,
                                        headers={{"Content-Type": "application/cloudevents+json"}}).status_code
    # what build_ports imports next (its clients' modules), so that every run, whatever
    # the code imported before stopping, ends with the same modules loaded
    import importlib
    for name in {clients!r}:
        importlib.import_module(name)
    out["first_call_ms"] = (time.perf_counter() - t) * 1000
    out["first_call_cpu_ms"] = (time.process_time() - c) * 1000
    out["status"] = status
print(json.dumps(out))
"""


def child_source() -> str:
    return CHILD.format(functions=str(FUNCTIONS), repo=str(REPO), sources=SOURCES, framework=FRAMEWORK,
                        roots=("numpy", "pydicom", "pynetdicom", "grpc", "fastapi", "pydantic"), noted=NOTED,
                        clients=CLIENTS)


def run_child(mode: str, target: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_CLOUD_PROJECT"}
    env["AXIOM_LOG_LEVEL"] = "CRITICAL"  # the first calls fail by design (no project): no tracebacks on stderr
    result = subprocess.run([sys.executable, "-c", child_source(), mode, target, repr(time.time()),
                             json.dumps(PUSHES.get(target, ({}, {})))],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"{mode} {target} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary(runs: list[dict], figure: str) -> str:
    """median, min, max of the wall clock, then of the CPU time, in ms."""
    return " ".join(f"{statistics.median(v):7.0f} {min(v):7.0f} {max(v):7.0f}"
                    for v in ([r[figure + "_ms"] for r in runs], [r[figure + "_cpu_ms"] for r in runs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per figure (default 7)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated entry points (default: all)")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")

    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
          f" on {os.cpu_count()} CPUs; python {sys.version.split()[0]}; {args.runs} runs each")
    imports = {module: [run_child("import", module) for _ in range(args.runs)] for module in FRAMEWORK}
    for module, runs in imports.items():
        heavy = [m for m in runs[0]["modules"] if m in NOTED]
        print(f"import {module} loads: {', '.join(heavy) or 'none of ' + ', '.join(NOTED)}")
    print(f"{'':24} {'wall clock, ms':^23} {'CPU time, ms':^23}")
    print(f"{'':24} {'median':>7} {'min':>7} {'max':>7} {'median':>7} {'min':>7} {'max':>7}")
    for module, runs in imports.items():
        print(f"{'import ' + module:24} {summary(runs, 'import')}")
        framework = [run_child("framework", module) for _ in range(args.runs)]
        print(f"{'  of which the framework':24} {summary(framework, 'framework')}")
    for target in targets:
        runs = [run_child("app", target) for _ in range(args.runs)]
        print(f"{'ready ' + target:24} {summary(runs, 'ready')}")
        print(f"{'first call ' + target:24} {summary(runs, 'first_call')}"
              f"  (answered {sorted({r['status'] for r in runs})})")
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
