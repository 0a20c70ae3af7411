"""The ``axiom-flow`` command line, run as a user runs it (the installed console script,
a child process): a mistake is one line on stderr and a non-zero exit, never a
traceback; every option documents its default and choices."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from pydicom.data import get_testdata_file

from shared.cli import build_parser, parse_args
from tests.support.procs import REPO

CT = get_testdata_file("CT_small.dcm")
CONFIG = {
    "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
    "rulesets": [{"id": "site", "rules": [{"id": "ct", "when": {"tag": "Modality", "value": "CT"},
                                           "destinations": ["archive"]}]}],
}


def axiom_flow(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "axiom-flow"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "shared.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AXIOM_")}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**environ, **(env or {})})


def assert_user_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit ``code``, nothing on stdout, one line on stderr holding every fragment."""
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_validate_a_missing_config(tmp_path):
    assert_user_error(axiom_flow("validate", str(tmp_path / "nope.yaml")), 2, "nope.yaml: no such file or directory")
    assert_user_error(axiom_flow("validate", str(tmp_path)), 2, "is a directory")


def test_validate_an_unreadable_or_invalid_config(tmp_path, config):
    binary = tmp_path / "image.yaml"
    binary.write_bytes(Path(CT).read_bytes())
    assert_user_error(axiom_flow("validate", str(binary)), 2, "not a YAML text file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("destinations: [\n")
    assert_user_error(axiom_flow("validate", str(broken)), 2, "not valid YAML")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"destinations": [{"id": "x", "type": "carrier-pigeon"}]}))
    assert_user_error(axiom_flow("validate", str(wrong)), 2, "invalid config: destinations.0")
    if os.geteuid() != 0:  # root reads anything
        config.chmod(0)
        assert_user_error(axiom_flow("validate", str(config)), 2, "permission denied")


def test_validate_a_good_config():
    result = axiom_flow("validate", "examples/local.yaml")
    assert result.returncode == 0 and result.stdout.startswith("examples/local.yaml: ok")


def test_bad_log_level_is_refused_with_the_choices(config):
    line = assert_user_error(axiom_flow("--log-level", "bogus", "validate", str(config)), 2, "--log-level")
    assert "'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'" in line
    assert axiom_flow("--log-level", "debug", "validate", str(config)).returncode == 0


def test_a_bad_log_format_is_refused_from_the_option_or_the_environment(config):
    line = assert_user_error(axiom_flow("serve", "--config", str(config), "--log-format", "yaml"), 2, "--log-format")
    assert "'text', 'json'" in line
    assert_user_error(axiom_flow("validate", str(config), env={"AXIOM_LOG_FORMAT": "yaml"}), 2,
                      "AXIOM_LOG_FORMAT=yaml: one of text, json")


def test_rules_test_refuses_a_bad_source_type_with_the_choices(config):
    line = assert_user_error(axiom_flow("rules", "test", CT, "--config", str(config), "--source-type", "bogus"),
                             2, "--source-type")
    assert "'cstore', 'stow', 'dicomweb_poller', 'dimse_poller', 'healthcare', 'bucket'" in line


def test_rules_test_refuses_a_bad_time(config):
    assert_user_error(axiom_flow("rules", "test", CT, "--config", str(config), "--at", "notatime"),
                      2, "'notatime' is not an ISO 8601 time")


def test_rules_test_refuses_a_source_ip_that_is_no_address(config):
    assert_user_error(axiom_flow("rules", "test", CT, "--config", str(config), "--source-ip", "ct-room.local"),
                      2, "--source-ip", "'ct-room.local' is not an IPv4 or IPv6 address")


def test_rules_test_refuses_a_missing_file(config, tmp_path):
    assert_user_error(axiom_flow("rules", "test", CT, str(tmp_path / "nonexistent.dcm"), "--config", str(config)),
                      2, "nonexistent.dcm: no such file or directory")


def test_rules_test_takes_the_config_from_axiom_config(config):
    assert_user_error(axiom_flow("rules", "test", CT), 2, "--config FILE, or set AXIOM_CONFIG")
    result = axiom_flow("rules", "test", CT, "--at", "2024-05-01T14:30+02:00", env={"AXIOM_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["matched"] == ["site/ct"] and out["destinations"] == ["archive"]
    # --config wins over the environment
    assert_user_error(axiom_flow("rules", "test", CT, "--config", "/nope.yaml", env={"AXIOM_CONFIG": str(config)}),
                      2, "/nope.yaml")


def test_a_reader_that_stops_early_gets_no_error_line(config):
    """``axiom-flow ... | head``: the pipe closes before the output is written."""
    script = Path(sys.executable).parent / "axiom-flow"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "shared.cli"]
    proc = subprocess.Popen([*cmd, "rules", "test", CT, "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # long before the child has loaded the config and written its JSON
    assert proc.wait(timeout=60) == 1 and proc.stderr.read() == ""


def test_no_command_and_unknown_options_are_one_line():
    assert_user_error(axiom_flow(), 2, "required: COMMAND")
    assert_user_error(axiom_flow("rules"), 2, "required: COMMAND")
    assert_user_error(axiom_flow("serve", "--bogus"), 2, "unrecognized arguments: --bogus")
    assert_user_error(axiom_flow("serve", "--config", "examples/local.yaml", "--http-port", "99999"),
                      2, "'99999' is not a port number")
    assert_user_error(axiom_flow("serve", "--config", "examples/local.yaml", "--pipeline-processes", "-1"),
                      2, "'-1' is not a whole number >= 0")


def test_version_is_the_package_version():
    result = axiom_flow("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"axiom-flow {metadata.version('axiom-flow')}"


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_has_help_with_its_default_and_choices():
    checked = 0
    for parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.dest} has no help"
            if action.default not in (None, False):
                assert f"(default: {action.default})" in text, f"{parser.prog} {action.dest}"
            if action.choices:
                assert "{" + ",".join(action.choices) + "}" in text
            checked += 1
    assert checked >= 15


def test_serve_defaults_come_from_the_environment(monkeypatch):
    for name in ("AXIOM_HTTP_PORT", "AXIOM_DATA_DIR", "AXIOM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    args = parse_args(["serve", "--config", "examples/local.yaml"])
    assert (args.data_dir, args.http_port) == ("data", 8080)
    monkeypatch.setenv("AXIOM_HTTP_PORT", "18080")
    monkeypatch.setenv("AXIOM_DATA_DIR", "/srv/axiom")
    monkeypatch.setenv("AXIOM_CONFIG", "examples/local.yaml")
    args = parse_args(["serve"])
    assert (args.config, args.data_dir, args.http_port) == ("examples/local.yaml", "/srv/axiom", 18080)
    assert parse_args(["serve", "--http-port", "9000"]).http_port == 9000


def test_serve_with_a_data_dir_it_cannot_create(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_user_error(axiom_flow("serve", "--config", "examples/local.yaml", "--data-dir", str(blocker / "data"),
                                 "--http-port", "0", "--pipeline-processes", "0"), 1, "Not a directory")


def test_serve_with_its_dicom_port_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = axiom_flow("serve", "--config", "examples/local.yaml", "--data-dir", str(tmp_path / "data"),
                            "--http-port", "0", env={"AXIOM_DICOM_PORT": str(port), "AXIOM_LISTEN_HOST": "127.0.0.1"})
    line = assert_user_error(result, 1, "Address already in use", f"127.0.0.1:{port}")
    assert re.match(r"^axiom-flow: ", line)



@pytest.mark.parametrize("argv,cores,shape", [
    ([], 2, (1, 1)), ([], 8, (1, 1)), ([], 1, (0, 0)),
    (["--pipeline-processes", "0"], 2, (0, 0)),  # one process: no route process either
    (["--pipeline-processes", "2"], 2, (2, 1)),
    (["--pipeline-processes", "1", "--route-processes", "0"], 2, (1, 0)),
    (["--pipeline-processes", "0", "--route-processes", "1"], 2, (0, 1)),
    (["--route-processes", "2"], 1, (0, 2)),
])
def test_serve_process_shape(monkeypatch, argv, cores, shape):
    monkeypatch.delenv("AXIOM_PIPELINE_PROCESSES", raising=False)
    monkeypatch.delenv("AXIOM_ROUTE_PROCESSES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    args = parse_args(["serve", "--config", "examples/local.yaml", *argv])
    assert (args.pipeline_processes, args.route_processes) == shape
    monkeypatch.setenv("AXIOM_PIPELINE_PROCESSES", "0")
    args = parse_args(["serve", "--config", "examples/local.yaml"])
    assert (args.pipeline_processes, args.route_processes) == (0, 0)
