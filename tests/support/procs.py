"""Real peers as processes: dcmtk storescp/storescu and ``axiom-flow serve``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # without it DCMTK stalls on delayed ACKs
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def accepts_connections(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    wait_for(lambda: accepts_connections(port, host, 0.5), timeout, what=f"{host}:{port} to listen")


def read_until_closed(sock) -> bytes:
    """Everything ``sock`` receives until the peer closes it or its timeout passes."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise RuntimeError(f"{tool} not found: install dcmtk (apt-get install dcmtk)")
    return path


def _complete(path: Path) -> bool:
    from shared.dicom.io import check_complete

    try:
        check_complete(path)
        return True
    except Exception:  # anything short of a complete Part 10 file (pydicom raises several types)
        return False


class StoreSCP:
    """dcmtk ``storescp`` writing every received instance bit-preserved into ``out_dir``,
    each under a unique file name (``+uf``), so an instance stored twice shows as two
    files while one aborted half-way leaves none. ``--fork`` takes concurrent
    associations, as a PACS does."""

    def __init__(self, out_dir: Path, *, ae_title: str = "STORESCP", port: int | None = None,
                 extra: list[str] | None = None):
        self.out_dir = Path(out_dir)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.extra = extra or []
        self.log_path = self.out_dir.parent / f"{self.out_dir.name}-storescp.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [require("storescp"), "-v", "-aet", self.ae_title, "-od", str(self.out_dir), "+xa", "+B", "+uf", "--fork",
             "--max-pdu", "131072", *self.extra, str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=DCMTK_ENV,
        )
        wait_port(self.port)
        return self

    def received_count(self) -> int:
        """Instances stored completely, duplicates included."""
        return len(self.files())

    def files(self) -> list[Path]:
        """Complete instance files. With ``+B`` storescp writes while receiving, so a
        transfer aborted half-way (and retried by the sender) leaves a partial file: that
        is not a delivery and is not listed (see ``partial_files``)."""
        return [p for p in self._all_files() if _complete(p)]

    def partial_files(self) -> list[Path]:
        return [p for p in self._all_files() if not _complete(p)]

    def _all_files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def stop(self) -> None:
        terminate(self.proc, 5)
        if self.proc:
            self._log.close()

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()


def storescu(port: int, files: list[Path], *, called_ae: str = "AXIOM", calling_ae: str = "STORESCU",
             extra: list[str] | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Send ``files`` on one association with dcmtk ``storescu``."""
    cmd = [require("storescu"), "-v", "-aet", calling_ae, "-aec", called_ae, *(extra or []),
           "127.0.0.1", str(port), *map(str, files)]
    result = subprocess.run(cmd, capture_output=True, env=DCMTK_ENV, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"storescu exited {result.returncode}:\n{result.stdout.decode()}{result.stderr.decode()}")
    return result


def api_key(docs, role: str = "admin") -> str:
    """A new API key of the user ``<role>@example.org`` (made with ``role`` if missing)
    in the document store ``docs``, as ``axiom-flow users create-admin`` makes one."""
    from shared.api import keys, users
    from shared.api.permissions import Role

    email = f"{role}@example.org"
    user = users.by_email(docs, email) or users.create(docs, email, Role(role))
    key, _ = keys.create(docs, user.id, name="tests")
    return key


def admin_key(data_dir: Path) -> str:
    """A new admin API key in the embedded store of ``data_dir`` (``serve``'s state.db)."""
    from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore

    db = SQLiteDatabase(Path(data_dir) / "state.db")  # makes the data dir
    try:
        return api_key(SQLiteDocumentStore(db))
    finally:
        db.conn().close()


class AxiomServer:
    """``axiom-flow serve`` as a child process with a config written from ``config``."""

    def __init__(self, data_dir: Path, config: dict, *, dicom_port: int | None = None,
                 http_port: int | None = None, env: dict | None = None, args: list[str] = ()):
        self.data_dir = Path(data_dir)
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        config = dict(config)
        config.setdefault("listeners", [{"id": "main", "ae_title": "AXIOM", "host": "127.0.0.1", "port": self.dicom_port}])
        self.config_path = self.data_dir.parent / f"{self.data_dir.name}-config.yaml"
        self.env = {**os.environ, **(env or {})}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-serve.log"
        self.config = config
        self.args = list(args)  # more ``serve`` options
        self.proc: subprocess.Popen | None = None
        self.api_key = ""

    def start(self) -> "AxiomServer":
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.api_key = admin_key(self.data_dir)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "serve", "--config", str(self.config_path),
             "--data-dir", str(self.data_dir), "--http-port", str(self.http_port), *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
        )
        wait_port(self.dicom_port)
        wait_port(self.http_port)
        return self

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1"

    @property
    def auth(self) -> dict:
        """The headers of an admin's API key."""
        return {"Authorization": f"Api-Key {self.api_key}"}

    def api_status(self) -> dict:
        """``GET /api/v1/status`` as an admin."""
        import httpx

        answer = httpx.get(f"{self.api}/status", headers=self.auth, timeout=5)
        answer.raise_for_status()
        return answer.json()

    def status(self) -> dict:
        """The runtime's own status (``runtime`` of ``GET /api/v1/status``): queue,
        deliveries, exceptions, listeners, gateway, pipeline_processes, retention."""
        return self.api_status()["runtime"]

    def retry(self, record_id: str):
        """``POST /api/v1/exceptions/{id}/retry`` as an admin: the httpx response."""
        import httpx

        return httpx.post(f"{self.api}/exceptions/{record_id}/retry", headers=self.auth, timeout=10)

    def exceptions(self) -> list[dict]:
        """Every exception record as stored (archived ones too), oldest first: with the
        message a record holds (``retry``), which the API does not show. Read from the
        state database, as the tests check what was recorded."""
        with sqlite3.connect(f"file:{self.data_dir / 'state.db'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT id, data FROM documents WHERE collection='exceptions'"
                              " ORDER BY json_extract(data, '$.created_at'), id").fetchall()
        return [{"id": record_id, **json.loads(data)} for record_id, data in rows]

    def wait_idle(self, timeout: float = 120.0) -> dict:
        """Until no message is pending in any topic; returns the last status."""
        last: dict = {}

        def idle():
            nonlocal last
            last = self.status()
            return not any(last["queue"].values())

        wait_for(idle, timeout, interval=0.2, what="the pipeline to drain")
        return last

    def kill(self) -> None:
        """SIGKILL: the crash the durability guarantees are about."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        terminate(self.proc, 15)
        if self.proc and not self._log.closed:
            self._log.close()

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()
