"""``axiom-flow serve``'s default runtime shape: with more than one core the stage
workers and route run in child processes (one command still runs everything);
``--pipeline-processes 0`` keeps one process. Stopping it, by SIGTERM or SIGINT, leaves
no process behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.support.procs import AxiomServer, storescu, wait_for

CONFIG = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
          "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}]}


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc/*/stat: the parent is field 4)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _serve(tmp_path: Path, env: dict | None = None) -> AxiomServer:
    server = AxiomServer(tmp_path / "data", CONFIG)
    # the shape under test is serve's own default, whatever the environment of the test run
    server.env = {k: v for k, v in server.env.items() if k not in ("AXIOM_PIPELINE_PROCESSES", "AXIOM_ROUTE_PROCESSES")}
    server.env.update(env or {})
    return server.start()


def _route_one(server: AxiomServer, tmp_path: Path) -> None:
    storescu(server.dicom_port, [Path(get_testdata_file("CT_small.dcm"))])
    server.wait_idle()
    delivered = list((server.data_dir / "out").rglob("*.dcm"))
    assert [dcmread(p).SOPInstanceUID for p in delivered] == [dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_default_shape_uses_child_processes_and_leaves_none_behind(tmp_path, stop_signal):
    server = _serve(tmp_path)
    try:
        children = server.status()["pipeline_processes"]
        assert len(children) == (2 if _cores() > 1 else 0)  # stages, and route on its own
        assert set(children) <= _descendants(server.proc.pid)
        _route_one(server, tmp_path)
        everything = _descendants(server.proc.pid)
        server.proc.send_signal(stop_signal)
        assert server.proc.wait(30) == 0
        wait_for(lambda: not any(_alive(pid) for pid in everything), 15, what="the child processes to exit")
    finally:
        server.stop()


def test_pipeline_processes_0_keeps_one_process(tmp_path):
    server = _serve(tmp_path, {"AXIOM_PIPELINE_PROCESSES": "0"})  # serve --pipeline-processes 0
    try:
        assert server.status()["pipeline_processes"] == []
        assert _descendants(server.proc.pid) == set()
        _route_one(server, tmp_path)
    finally:
        server.stop()
