"""The spanner on GCP end to end, over the eight Orthancs of tests/support/spanner_bed.py
and the Firestore emulator: the Cloud Function ``spanner`` (functions/api.py, served as
functions-framework serves it) takes an async query and starts the Cloud Run job
``AXIOM_SPANNER_JOB`` through the real google-cloud-run client (REST transport) against
a local HTTP server standing in for run.googleapis.com, which records the ``RunJob``
request and answers a long-running Operation; the test then plays Cloud Run, running
each task as the job's container would (``python -m shared.cli spanner run-task`` with
``CLOUD_RUN_TASK_INDEX``/``CLOUD_RUN_TASK_COUNT`` and the overridden
``AXIOM_SPANNER_QUERY_ID``), and reads the merged answer through the function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from functions_framework import create_app
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from shared.adapters.firestore import FirestoreDocumentStore
from shared.api.app import PREFIX
from shared.cli import main
from shared.config import parse_config
from shared.runtime import gcp
from shared.spanner.job import CloudRunJobs
from shared.spanner.merge import sources_of
from tests.support.gcp import PROJECT, unique
from tests.support.spanner_bed import spanner_bed  # noqa: F401 (fixture)

ROOT = Path(__file__).parents[2]
SOURCE = str(ROOT / "functions" / "api.py")
JOB = f"projects/{PROJECT}/locations/europe-west4/jobs/axiom-spanner-query"
OPERATION = f"projects/{PROJECT}/locations/europe-west4/operations/op-1"
STUDY_UID = "0020000D"


class CloudRunStandIn:
    """run.googleapis.com for one method: records each request (method, path, JSON
    body) and answers RunJob as Cloud Run does, with a long-running Operation."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stand_in.requests.append(("POST", self.path.split("?")[0], json.loads(body or b"{}")))
                answer = json.dumps({"name": OPERATION, "done": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # quiet: the test asserts on requests instead
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="cloud-run-stand-in", daemon=True)

    def __enter__(self) -> "CloudRunStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def client(self) -> run_v2.JobsClient:
        """google-cloud-run's own client, REST transport, pointed here."""
        return run_v2.JobsClient(transport="rest", credentials=AnonymousCredentials(),
                                 client_options=ClientOptions(api_endpoint=self.url))


@pytest.fixture
def function(firestore_emulator, fake_gcs, spanner_bed, monkeypatch, capsys):  # noqa: F811
    """(test client of the ``spanner`` function, admin key headers, the bed, the spanner
    function's app): config with a spanner over the eight servers and one down source."""
    bed = spanner_bed
    bed.set_delay(0)
    prefix = unique("spanfn")
    monkeypatch.setenv("AXIOM_COLLECTION_PREFIX", prefix)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    monkeypatch.setenv("AXIOM_SPANNER_JOB", JOB)
    monkeypatch.setattr(gcp, "_ports", None)
    monkeypatch.setattr(gcp, "_apis", {})
    members = [{"source": s["id"], "priority": n} for n, s in enumerate(bed.sources)]
    gcp.load_config(parse_config({
        "sources": [*bed.sources, *bed.down],
        "spanners": [{"id": "everywhere", "sources": [*members, {"source": bed.down[0]["id"]}], "timeout_s": 10,
                      "retry_attempts": 0, "cache_ttl_s": 0}],
    }), FirestoreDocumentStore(prefix=prefix))
    assert main(["users", "create-admin", "--gcp", "--project", PROJECT, "--email", "ops@example.org"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    with TestClient(create_app(target="spanner", source=SOURCE)) as client:
        yield client, {"Authorization": f"Api-Key {key}"}, bed, gcp.spanner_api()


def run_tasks(count: int, query_id: str) -> list[str]:
    """Cloud Run's part: ``count`` task containers at once, each with its index, the
    count and the execution's environment override; their output lines."""
    procs = [subprocess.Popen([sys.executable, "-m", "shared.cli", "spanner", "run-task"], cwd=ROOT,
                              env={**os.environ, "CLOUD_RUN_TASK_INDEX": str(index), "CLOUD_RUN_TASK_COUNT": str(count),
                                   "AXIOM_SPANNER_QUERY_ID": query_id},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for index in range(count)]
    lines = []
    for index, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"task {index}: {err[-2000:]}"
        lines.append(out.strip().splitlines()[-1])
    return lines


def test_an_async_query_runs_as_a_cloud_run_job_and_the_function_gives_the_merged_answer(function):
    client, auth, bed, app = function
    # the function's app starts executions of AXIOM_SPANNER_JOB; its Google client is
    # pointed at the stand-in (the deployed one finds run.googleapis.com and its credentials)
    assert isinstance(app.state.spanner_jobs, CloudRunJobs) and app.state.spanner_jobs.job_name == JOB
    # the spanner's routes and /me only: not the rest of the API
    assert client.get(f"{PREFIX}/me", headers=auth).status_code == 200
    assert client.get(f"{PREFIX}/config/destinations", headers=auth).status_code == 404
    tasks = len(bed.sources) + 1
    with CloudRunStandIn() as cloud_run:
        app.state.spanner_jobs = CloudRunJobs(app.state.spanner_jobs.job_name, client=cloud_run.client())
        assert client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "everywhere"}).status_code == 401
        started = client.get(f"{PREFIX}/spanner/qido/studies", params={"spanner_config_id": "everywhere",
                                                                       "async": "true"}, headers=auth)
        assert started.status_code == 202, started.text
        query_id = started.json()["id"]
        assert started.headers["Location"] == f"{PREFIX}/spanner/queries/{query_id}"

        # one RunJob, with the execution's task count and query id as overrides
        [(method, path, body)] = cloud_run.requests
        assert (method, path) == ("POST", f"/v2/{JOB}:run")
        overrides = body["overrides"]
        assert overrides["taskCount"] == tasks
        assert overrides["containerOverrides"] == [{"env": [{"name": "AXIOM_SPANNER_QUERY_ID", "value": query_id}]}]

    status_url = f"{PREFIX}/spanner/queries/{query_id}"
    running = client.get(status_url, headers=auth).json()
    assert (running["state"], running["done"], running["tasks"]) == ("running", 0, tasks)

    env = {e["name"]: e["value"] for e in overrides["containerOverrides"][0]["env"]}
    lines = run_tasks(overrides["taskCount"], env["AXIOM_SPANNER_QUERY_ID"])
    assert lines == [f"spanner query {query_id}: task {i} of {tasks} asked 1 source(s)" for i in range(tasks)]

    status = client.get(status_url, headers=auth)
    assert status.status_code == 200, status.text
    done = status.json()
    assert done["state"] == "finished" and done["done"] == done["tasks"] == tasks
    assert done["partial"] and done["missing"] == [bed.down[0]["id"]]
    assert [s["source"] for s in done["sources"]] == [*(s["id"] for s in bed.sources), bed.down[0]["id"]]
    assert {s["source"]: s["state"] for s in done["sources"]}[bed.down[0]["id"]] != "ok"
    # every study once, however many servers hold it, with the sources that hold it
    uids = [r[STUDY_UID]["Value"][0] for r in done["results"]]
    assert sorted(uids) == sorted(bed.studies) and done["total"] == len(bed.studies)
    held_by = {uid: {sid for sid, held in bed.truth.items() if uid in held} for uid in bed.studies}
    for row in done["results"]:
        assert set(sources_of(row)) == held_by[row[STUDY_UID]["Value"][0]]
    assert client.get(f"{PREFIX}/spanner/queries/nope", headers=auth).status_code == 404
