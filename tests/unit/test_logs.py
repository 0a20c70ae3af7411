"""shared/logs.py: errors described without values, log records made safe."""

import errno
import subprocess
import sys
import textwrap

from shared.errors import DeliveryRefused, RetryLater
from shared.logs import describe_error, redact
from tests.support.procs import REPO

CANARY = "CANARY7Q3"


def test_own_errors_keep_their_reasons():
    assert describe_error(RetryLater("peer down")) == "peer down"
    assert describe_error(DeliveryRefused("conflict"), typed=True) == "DeliveryRefused: conflict"


def test_os_errors_lose_their_file_names():
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", f"/data/out/{CANARY}/x.dcm")
    assert describe_error(exc) == "FileNotFoundError (ENOENT: No such file or directory)"
    assert describe_error(OSError(f"{CANARY} and no errno")).startswith("OSError")
    assert CANARY not in describe_error(OSError(f"{CANARY} and no errno"))


def test_other_errors_are_their_type_and_where_they_were_raised():
    try:
        int(f"{CANARY}")
    except ValueError as exc:
        described = describe_error(exc)
    assert described.startswith("ValueError raised at tests/unit/test_logs.py:") and CANARY not in described


def test_redact_withholds_quoted_values_of_either_kind():
    assert redact(f"Invalid value for VR DA: '{CANARY}'.") == "Invalid value for VR DA: <value withheld>."
    assert redact(f'Value "{CANARY}" is not valid for elements with a VR of DS') == (
        "Value <value withheld> is not valid for elements with a VR of DS")
    assert CANARY not in redact(repr(f"it's \"{CANARY}\" 'x"))
    assert redact("x" * 5000).endswith("... (3000 characters withheld)")


def test_installed_logging_keeps_values_out_of_every_line():
    """In a process of its own: install() changes the process's logging for good."""
    script = textwrap.dedent(f"""
        import logging, sys, warnings
        from shared.logs import install
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
        install()
        assert "pydicom" not in sys.modules, "install() imported pydicom"
        from pydicom import config
        assert config.settings.reading_validation_mode == config.IGNORE  # set as pydicom was imported
        from pydicom.misc import warn_and_log
        from pydicom.valuerep import validate_value
        warn_and_log("Invalid value for VR DA: '{CANARY}'.")          # pydicom's logger and a warning
        validate_value("DA", "{CANARY}", config.settings.reading_validation_mode)  # off: silent
        warnings.warn("a value {CANARY!r} in a warning")
        logging.getLogger("somelib").warning("%s", "x" * 5000)        # capped
        try:
            open("/nonexistent/{CANARY}/x.dcm")
        except OSError:
            logging.getLogger("shared.stages").exception("could not read")
        try:
            raise ValueError("bad {CANARY}")
        except ValueError:
            logging.getLogger("somelib").exception("failed")
        print("done")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "done" in result.stdout, output
    lines = output.splitlines()
    assert "pydicom WARNING Invalid value for VR DA: <value withheld>." in lines, output
    assert any(line.startswith("py.warnings WARNING") for line in lines), output
    assert "FileNotFoundError (ENOENT: No such file or directory)" in lines, output
    assert any(line.startswith("ValueError raised at <string>:") for line in lines), output
    assert any(line.endswith("characters withheld)") for line in lines), output
    assert CANARY not in output


# --- JSON lines in Cloud Logging's format -----------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _json_lines(fn, *, fmt="json", level="DEBUG") -> list[dict]:
    """What ``fn`` logs once the process's logging is set up by configure(), parsed."""
    import io
    import json
    import logging

    from shared.logs import configure

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure(level, fmt, stream=stream, force=True)
    try:
        fn()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    return [json.loads(line) for line in stream.getvalue().splitlines()] if fmt == "json" else stream.getvalue()


def test_json_lines_carry_severity_message_time_and_the_labels_of_their_context():
    import logging
    from datetime import datetime

    from shared.logs import LABELS_FIELD, SOURCE_FIELD, labelled

    log = logging.getLogger("shared.test")

    def run():
        with labelled(stage="route", sop_uid="1.2.3", destination="pacs", rule=None):
            for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL, 25):
                log.log(level, "sent %s", "1.2.3")
        log.info("outside")

    lines = _json_lines(run)
    assert [line["severity"] for line in lines] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "INFO", "INFO"]
    assert lines[0]["message"] == "sent 1.2.3" and lines[0]["logger"] == "shared.test"
    assert lines[0][LABELS_FIELD] == {"stage": "route", "sop_uid": "1.2.3", "destination": "pacs"}
    assert LABELS_FIELD not in lines[-1]  # the context ended with its block
    assert datetime.fromisoformat(lines[0]["time"]).utcoffset().total_seconds() == 0  # RFC 3339, UTC
    assert lines[0]["time"].endswith("Z")
    assert lines[0][SOURCE_FIELD]["file"].endswith("test_logs.py") and lines[0][SOURCE_FIELD]["function"] == "run"


def test_json_lines_hold_the_safe_traceback_and_no_value():
    import logging

    def run():
        try:
            raise ValueError(f"bad {CANARY}")
        except ValueError:
            logging.getLogger("somelib").exception("failed")
        logging.getLogger("pydicom").warning(f"Invalid value for VR PN: '{CANARY}'")

    failed, warned = _json_lines(run)
    assert failed["severity"] == "ERROR" and failed["message"].startswith("failed\nTraceback (most recent call last):")
    assert "ValueError raised at tests/unit/test_logs.py:" in failed["message"]
    assert warned["message"] == "Invalid value for VR PN: <value withheld>"
    assert CANARY not in str(failed) + str(warned)


def test_text_lines_are_as_before_and_name_the_child_process():
    import io
    import logging

    from shared.logs import configure

    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    configure("INFO", "text", process_label="pipeline", stream=stream, force=True)
    try:
        logging.getLogger("shared.test").info("planned %s", "1.2.3")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert stream.getvalue().rstrip().endswith(" INFO shared.test[pipeline]: planned 1.2.3")


def test_trace_from_traceparent_or_cloud_trace_context():
    from shared.logs import SAMPLED_FIELD, SPAN_FIELD, TRACE_FIELD, trace_fields

    trace = f"projects/proj-1/traces/{TRACE_ID}"
    assert trace_fields({"Traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}, "proj-1") == {
        TRACE_FIELD: trace, SPAN_FIELD: "00f067aa0ba902b7", SAMPLED_FIELD: True}
    # Google's header: the span id in decimal, written in hex for Cloud Logging
    assert trace_fields({"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=0"}, "proj-1") == {
        TRACE_FIELD: trace, SPAN_FIELD: "0000000000000001", SAMPLED_FIELD: False}
    # an invalid traceparent (all-zero trace id) gives way to the other header
    assert trace_fields({"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01",
                         "x-cloud-trace-context": TRACE_ID}, "proj-1") == {TRACE_FIELD: trace, SAMPLED_FIELD: False}
    assert trace_fields({"traceparent": "garbage"}, "proj-1") == {}


def test_the_trace_names_the_project_of_the_environment(monkeypatch):
    from shared.logs import TRACE_FIELD, trace_fields

    headers = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    assert trace_fields(headers) == {}  # a trace Cloud Logging cannot place is left out
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj-2")
    assert trace_fields(headers)[TRACE_FIELD] == f"projects/proj-2/traces/{TRACE_ID}"


def test_traced_lines_carry_the_trace():
    import logging

    from shared.logs import TRACE_FIELD, traced

    def run():
        with traced({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}, "proj-1"):
            logging.getLogger("shared.test").info("inside")
        logging.getLogger("shared.test").info("after")

    inside, after = _json_lines(run)
    assert inside[TRACE_FIELD] == f"projects/proj-1/traces/{TRACE_ID}" and TRACE_FIELD not in after


def test_a_stage_run_ends_with_its_outcome_and_duration():
    import logging

    import pytest

    from shared.logs import LABELS_FIELD, add_labels, note_outcome, stage_run

    def run():
        with stage_run("match", source="main") as current:
            add_labels(sop_uid="1.2.3")  # known once the header is read
            logging.getLogger("shared.stages").info("planned")
            current.outcome = "planned"
        with stage_run("morph", sop_uid="1.2.3"):
            note_outcome("quarantined")
        with pytest.raises(RetryLater), stage_run("route", sop_uid="1.2.3", destination="pacs"):
            raise RetryLater("peer down")
        with pytest.raises(KeyError), stage_run("route", sop_uid="1.2.3", destination="pacs"):
            raise KeyError("x")

    planned_line, *done = _json_lines(run)
    assert planned_line[LABELS_FIELD] == {"stage": "match", "source": "main", "sop_uid": "1.2.3"}
    assert [(d["event"], d["stage"], d["outcome"], d["severity"]) for d in done] == [
        ("stage_done", "match", "planned", "INFO"), ("stage_done", "morph", "quarantined", "WARNING"),
        ("stage_done", "route", "retry", "WARNING"), ("stage_done", "route", "error", "ERROR")]
    assert done[0][LABELS_FIELD] == planned_line[LABELS_FIELD]
    assert all(isinstance(d["duration_ms"], float) and d["duration_ms"] >= 0 for d in done)
    assert done[0]["message"].startswith("stage match done: planned in ")


def test_after_import_calls_back_once_the_module_is_imported(tmp_path, monkeypatch):
    import importlib

    from shared.logs import after_import

    (tmp_path / "axiom_after_import_probe.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    after_import("axiom_after_import_probe", seen.append)
    assert seen == []  # not imported by after_import
    module = importlib.import_module("axiom_after_import_probe")
    assert seen == [module] and module.VALUE == 1
    assert not any(type(f).__name__ == "_AfterImport" for f in sys.meta_path)  # the finder is gone
    after_import("axiom_after_import_probe", seen.append)  # imported already: called at once
    assert seen == [module, module]
    monkeypatch.delitem(sys.modules, "axiom_after_import_probe")
