"""JSON logs of a real pipeline run (``axiom-flow serve --log-format json``, dcmtk
sending) and of a Cloud Functions entry point: every line an object in Cloud Logging's
format with the ids of what it is about, and no patient name or ID anywhere."""

import base64
import json
import logging
from pathlib import Path

from pydicom import dcmread

from shared.logs import LABELS_FIELD, SAMPLED_FIELD, SPAN_FIELD, TRACE_FIELD
from tests.support.dicomgen import make_ct_study
from tests.support.procs import AxiomServer, free_port, storescu, wait_for

PATIENT_NAME = "QUILLFEATHER^ROSAMUND"
PATIENT_ID = "PID-8842-LOGCANARY"
SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def _patient_study(out_dir: Path, count: int) -> list[Path]:
    paths = make_ct_study(out_dir, count, rows=32, columns=32, patient_id=PATIENT_ID)
    for path in paths:
        ds = dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.save_as(path)
    return paths


def _short_pixel_data(path: Path) -> Path:
    """Rows x Columns larger than its native Pixel Data holds: quarantined by match."""
    ds = dcmread(path)
    ds.Rows = 64
    ds.save_as(path)
    return path


def _values_absent(text: str) -> None:
    for value in (PATIENT_NAME, PATIENT_ID, *PATIENT_NAME.split("^")):
        assert value not in text, f"{value} in the log output"


def test_a_pipeline_run_logs_json_lines_with_ids_and_no_patient_values(tmp_path):
    good = _patient_study(tmp_path / "good", 2)
    [bad] = _patient_study(tmp_path / "bad", 1)
    _short_pixel_data(bad)
    config = {
        "destinations": [
            {"id": "archive", "type": "filesystem", "path": "out"},
            # nobody listens there: each delivery fails twice, then becomes a failed record
            {"id": "pacs", "type": "cstore", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(),
             "retry": {"max_attempts": 2, "initial_backoff_s": 0.1}},
        ],
        "rulesets": [{"id": "main", "rules": [{
            "id": "all", "destinations": ["archive", "pacs"],
            "actions": [{"action": "set", "tag": "InstitutionName", "value": "LOGGED"}]}]}],
    }
    server = AxiomServer(tmp_path / "data", config, args=["--log-format", "json", "--pipeline-processes", "1"])
    with server:
        storescu(server.dicom_port, [*good, bad])
        wait_for(lambda: len(server.exceptions()) == 3, 60, what="two failed deliveries and a quarantined instance")
        server.wait_idle()
        assert len(list((server.data_dir / "out").rglob("*.dcm"))) == 2
    output = server.log_path.read_text()
    lines = [json.loads(line) for line in output.splitlines()]  # every line a JSON object

    assert all(line["severity"] in SEVERITIES and isinstance(line["message"], str) and line["time"]
               for line in lines)
    _values_absent(output)
    done = [line for line in lines if line.get("event") == "stage_done"]
    assert all(line[LABELS_FIELD]["stage"] == line["stage"] and line[LABELS_FIELD]["sop_uid"] for line in done)
    # the stages ran in the child processes: route in its own
    assert {(line["stage"], line[LABELS_FIELD]["process"]) for line in done} == {
        ("match", "pipeline"), ("morph", "pipeline"), ("route", "route")}
    outcomes = {(line["stage"], line[LABELS_FIELD]["sop_uid"], line[LABELS_FIELD].get("destination"), line["outcome"])
                for line in done}
    bad_uid = str(dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
    assert ("match", bad_uid, None, "quarantined") in outcomes
    for uid in (str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in good):
        assert {("match", uid, "archive,pacs", "planned"), ("morph", uid, "archive,pacs", "published"),
                ("route", uid, "archive", "delivered"), ("route", uid, "pacs", "retry"),
                ("route", uid, "pacs", "failed")} <= outcomes
    route_lines = [line for line in done if line["stage"] == "route"]
    assert all(line[LABELS_FIELD]["listener"] == "main" for line in route_lines)
    assert all(isinstance(line["duration_ms"], float) for line in done)
    # the error paths logged, with their severities
    assert {line["severity"] for line in done if line["outcome"] in ("quarantined", "failed", "retry")} == {"WARNING"}
    assert any(line["logger"] == "shared.adapters.local_queue" and line["severity"] == "WARNING" for line in lines)


def test_a_function_logs_the_trace_of_its_request(tmp_path, monkeypatch):
    """``match`` called as functions-framework calls it, with a ``traceparent`` header:
    its lines carry the trace as Cloud Logging links it to the request."""
    import io

    from functions_framework import create_app

    from shared import logs
    from shared.messages import ObjectFinalized
    from shared.runtime import gcp as gcp_runtime
    from tests.support.stageports import build_ports, config, ingest

    ports = build_ports(tmp_path, config({"id": "all", "destinations": ["archive"]}))
    [path] = _patient_study(tmp_path / "in", 1)
    event = ingest(ports, path, calling_ae="MOD1")
    monkeypatch.setattr(gcp_runtime, "_ports", ports)  # the stages over local adapters instead of GCP's
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "axiom-logs")
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        app = create_app(target="match", source=str(Path(__file__).parents[2] / "functions" / "main.py"),
                         signature_type="cloudevent")
        logs.configure("INFO", "json", stream=stream, force=True)
        body = ObjectFinalized(blob=event.blob).model_dump_json().encode()
        cloud_event = {"specversion": "1.0", "type": "google.cloud.pubsub.topic.v1.messagePublished",
                       "source": "//pubsub.googleapis.com/projects/p/topics/ingest", "id": "ingest-1",
                       "datacontenttype": "application/json",
                       "data": {"message": {"data": base64.b64encode(body).decode(), "messageId": "1"},
                                "subscription": "projects/p/subscriptions/ingest"}}
        answer = app.test_client().post("/", json=cloud_event, headers={
            "Content-Type": "application/cloudevents+json", "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
        assert answer.status_code == 200, answer.data
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [done] = [line for line in lines if line.get("event") == "stage_done"]
    assert (done["stage"], done["outcome"]) == ("match", "planned")
    assert done[TRACE_FIELD] == f"projects/axiom-logs/traces/{trace_id}"
    assert (done[SPAN_FIELD], done[SAMPLED_FIELD]) == ("b7ad6b7169203331", True)
    assert done[LABELS_FIELD]["sop_uid"] == str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert all(line[TRACE_FIELD] == done[TRACE_FIELD] for line in lines)
    assert ports.bus.on("planned")  # the function did its work
    _values_absent(stream.getvalue())
