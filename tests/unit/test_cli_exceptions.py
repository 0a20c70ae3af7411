"""``axiom-flow exceptions ...`` against serve's real HTTP server (waitress, the API
mounted as serve mounts it): tables and JSON, one record's attempts, single and bulk
actions with a progress bar on stderr, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fastapi import HTTPException, Request

from shared import cli_progress, exceptions
from shared.api.app import create_api
from shared.api.auth import authenticate
from shared.api.permissions import Principal, Role
from shared.cli import main
from shared.http import HostCheck, HttpServer, create_app
from shared.messages import TOPIC_DELIVER
from tests.support.procs import REPO
from tests.support.stageports import build_ports
from tests.unit.test_exceptions_api import DESTINATIONS, delivery, failed

KEY = "test-operator-key"


def key_check(request: Request) -> Principal:
    """Until API keys are stored: this one key is an operator's."""
    if request.headers.get("Authorization") != f"Api-Key {KEY}":
        raise HTTPException(401, "no valid credentials")
    return Principal(user_id="op1", email="op1@example.org", role=Role.OPERATOR, via="api_key")


@pytest.fixture
def served(tmp_path):
    ports = build_ports(tmp_path, {"destinations": DESTINATIONS})
    api = create_api(ports)
    api.dependency_overrides[authenticate] = key_check
    host_check = HostCheck("127.0.0.1", None)  # as serve's: its own address answers
    server = HttpServer(create_app(ports, dict, stow=False, api=api, host_check=host_check), "127.0.0.1", 0,
                        max_request_body=1 << 20)
    host_check.port = server.port
    server.start()
    yield ports, f"http://127.0.0.1:{server.port}"
    server.stop()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["exceptions", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_as_a_table_and_as_json(served, capsys, monkeypatch):
    ports, url = served
    monkeypatch.setenv("AXIOM_API_KEY", KEY)
    first = failed(ports, "pacs", "association rejected")
    failed(ports, "archive", "timeout")
    code, out, err = run(capsys, "list", "--url", url, "--destination", "pacs")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["ID", "CREATED", "STATUS", "STAGE"]
    assert len(lines) == 2 and lines[1].startswith(first) and "association rejected" in lines[1]
    assert "1 record(s)" in err
    code, out, _ = run(capsys, "list", "--url", url, "--json", "--limit", "1", "--all-pages")
    assert code == 0 and len(json.loads(out)["items"]) == 2
    created = ports.docs.get(exceptions.EXCEPTIONS, first)["created_at"]
    assert created[:19] + "+00:00" in lines[1]  # the whole time to the second, not cut short


def test_the_command_prints_no_log_line_of_its_http_client(served):
    """As an operator runs it: its own process, logging set up by main()."""
    ports, url = served
    failed(ports, "pacs", "association rejected")
    done = subprocess.run([sys.executable, "-m", "shared.cli", "exceptions", "list", "--url", url],
                          env={**os.environ, "AXIOM_API_KEY": KEY}, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == "1 record(s)\n"


def test_show_prints_the_attempts(served, capsys):
    ports, url = served
    record_id = exceptions.record_exception(
        ports, stage="route", status="failed", reason="after 2 attempt(s): refused", destination_id="pacs",
        attempts=[{"at": "2026-12-01T10:00:00+00:00", "reason": "first"},
                  {"at": "2026-12-01T10:00:05+00:00", "reason": "second"}])
    code, out, _ = run(capsys, "show", record_id, "--url", url, "--api-key", KEY)
    assert code == 0 and "attempts (2, newest 2 kept)" in out
    assert "2026-12-01T10:00:00+00:00  first" in out and "second" in out


def test_retry_ids_and_bulk_archive_with_a_progress_bar(served, capsys, monkeypatch):
    monkeypatch.setattr(cli_progress, "on_terminal", lambda: True)  # the bar is drawn on a terminal only
    ports, url = served
    one = failed(ports, "pacs")
    code, out, _ = run(capsys, "retry", one, "--url", url, "--api-key", KEY)
    assert code == 0 and out.strip() == f"{one}: retried"
    assert len(ports.bus.on(TOPIC_DELIVER)) == 1
    many = [failed(ports, "archive", reason="peer said no") for _ in range(4)]
    code, out, err = run(capsys, "archive", "--reason", "said no", "--url", url, "--api-key", KEY)
    assert code == 0 and "4 done, 0 failed of 4" in out
    assert "exceptions.archive [" in err and "4/4 (0 failed)" in err
    assert all(ports.docs.get(exceptions.EXCEPTIONS, i)["archived_at"] for i in many)
    assert not ports.docs.get(exceptions.EXCEPTIONS, one).get("archived_at")
    monkeypatch.setattr(cli_progress, "on_terminal", lambda: False)
    code, out, err = run(capsys, "archive", one, "--url", url, "--api-key", KEY)
    assert code == 0 and out.strip() == f"{one}: archived"  # its status stays retried
    assert "[" not in err  # not a terminal: no bar
    assert ports.docs.get(exceptions.EXCEPTIONS, one)["archived_at"]


@pytest.mark.parametrize("argv, says, code", [
    (["show", "nope"], "axiom-flow: HTTP 404: no exception record nope", 1),
    (["list", "--status", "bogus"], "axiom-flow: HTTP 400: status 'bogus' is not one of", 1),
    (["release", "ID"], "axiom-flow: ID: HTTP 404: no exception record ID", 1),
    (["retry"], "axiom-flow: retry what?", 1),
])
def test_mistakes_and_http_errors_are_one_line_and_non_zero(served, capsys, argv, says, code):
    _, url = served
    got, out, err = run(capsys, *argv, "--url", url, "--api-key", KEY)
    assert got == code and err.startswith(says) and err.count("\n") == 1 and "Traceback" not in err


def test_without_a_key_or_a_server_one_line_each(served, capsys, monkeypatch):
    monkeypatch.delenv("AXIOM_API_KEY", raising=False)
    _, url = served
    code, _, err = run(capsys, "list", "--url", url)
    assert code == 1 and err.startswith("axiom-flow: HTTP 401") and "AXIOM_API_KEY" in err
    code, _, err = run(capsys, "list", "--url", "http://127.0.0.1:9", "--api-key", KEY)
    assert code == 1 and err.startswith("axiom-flow: cannot reach http://127.0.0.1:9") and err.count("\n") == 1


def test_a_held_record_released_by_the_cli(served, capsys):
    ports, url = served
    held = exceptions.hold_delivery(ports, delivery("off"), "destination off is disabled", stage="route")
    code, _, err = run(capsys, "release", held, "--url", url, "--api-key", KEY)
    assert code == 1 and err.startswith(f"axiom-flow: {held}: HTTP 409") and "stays held: " in err
    ports.reconfigure({"destinations": [{"id": "off", "type": "filesystem", "path": "off"}]})
    code, out, err = run(capsys, "release", "--status", "held", "--url", url, "--api-key", KEY, "--json")
    assert code == 0 and json.loads(out)["done"] == 1
