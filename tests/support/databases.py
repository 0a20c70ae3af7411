"""Throwaway PostgreSQL and MariaDB servers from the Debian packages (see
../shared/TESTBED.md "Databases"), each in its own temp directory on a free port, for
the crosswalk tests. As root the servers run as the ``postgres`` / ``mysql`` users
(neither runs as root); otherwise as the current user.

Fixtures (session-scoped): ``postgres_server`` and ``mariadb_server``, each a server
with ``start()``, ``stop()``, ``url(driver)`` and the login ``user``/``password``/``database``.
Import them into a test module to use them. A test that stops a server starts it again."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.procs import free_port, wait_for

USER, PASSWORD, DATABASE = "axiom", "Xw-4lk pass'word", "crosswalk"
# Debian installs PostgreSQL's server tools under its major version; the newest one wins
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"),
             key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _as_service_user(name: str) -> dict:
    """Popen arguments that run a server as ``name`` when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _own_dir(prefix: str, service_user: str) -> Path:
    # not tempfile's current directory: the embedded runtime points it at its data dir,
    # which the service user cannot enter
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR") or "/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(service_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _tool(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/test.sh installs postgresql and mariadb-server)")
    return found


def load_table(server, name: str, columns: list[str], rows: list[tuple]) -> None:
    """(Re)create table ``name`` in ``server``'s database with text ``columns`` holding
    ``rows``: a crosswalk map's table."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server.url())
    meta = sqlalchemy.MetaData()
    table = sqlalchemy.Table(name, meta, *(sqlalchemy.Column(c, sqlalchemy.String(64)) for c in columns))
    meta.drop_all(engine)
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [dict(zip(columns, row)) for row in rows])
    engine.dispose()


class _Server:
    user, password, database = USER, PASSWORD, DATABASE
    service_user = ""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = open(root / "server.log", "ab")

    def command(self) -> list[str]:
        raise NotImplementedError

    def stop_signal(self) -> int:
        return signal.SIGTERM

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log, cwd=self.root,
                                     **_as_service_user(self.service_user))
        wait_for(lambda: self._answers() or self.proc.poll() is not None, timeout=60, what=f"{type(self).__name__}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{type(self).__name__} exited: see {self.root / 'server.log'}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(self.stop_signal())
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _answers(self) -> bool:
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(self.url(), poolclass=sqlalchemy.pool.NullPool)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            return True
        except sqlalchemy.exc.OperationalError:
            time.sleep(0.1)
            return False

    def url(self, driver: str | None = None):
        import sqlalchemy

        return sqlalchemy.URL.create(driver or self.driver, username=self.user, password=self.password,
                                     host="127.0.0.1", port=self.port, database=self.database)

    def close(self) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


class PostgresServer(_Server):
    driver = "postgresql+psycopg"
    service_user = "postgres"

    def __init__(self):
        super().__init__(_own_dir("axiom-pg-", self.service_user))
        self.data = self.root / "data"
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        initdb = _tool("initdb", PG_BIN / "initdb")
        subprocess.run([initdb, "-D", str(self.data), "-U", self.user, "--pwfile", str(pwfile), "-E", "UTF8",
                        "--auth=scram-sha-256", "--no-sync", "--locale=C"],
                       check=True, stdout=self.log, stderr=self.log, cwd=self.root,
                       **_as_service_user(self.service_user))
        pwfile.unlink()
        self.start_first = True

    def command(self) -> list[str]:
        return [_tool("postgres", PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]

    def stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: ends open sessions instead of waiting for them

    def _answers(self) -> bool:
        if self.start_first:  # the database does not exist yet: log into the default one to create it
            import sqlalchemy

            database, self.database = self.database, "postgres"
            try:
                if not super()._answers():
                    return False
                engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
                engine.dispose()
            finally:
                self.database = database
            self.start_first = False
        return super()._answers()


class MariaDBServer(_Server):
    driver = "mysql+pymysql"
    service_user = "mysql"

    def __init__(self):
        super().__init__(_own_dir("axiom-mariadb-", self.service_user))
        self.data = self.root / "data"
        self.socket = self.root / "mariadb.sock"
        user = ["--user=mysql"] if os.geteuid() == 0 else []
        subprocess.run([_tool("mariadb-install-db"), "--no-defaults", f"--datadir={self.data}", *user,
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=self.log, stderr=self.log, cwd=self.root)
        self.start_first = True

    def command(self) -> list[str]:
        user = ["--user=mysql"] if os.geteuid() == 0 else []
        return [_tool("mariadbd", Path("/usr/sbin/mariadbd")), "--no-defaults", f"--datadir={self.data}",
                f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                f"--pid-file={self.root / 'mariadb.pid'}", "--skip-name-resolve", "--skip-log-bin",
                "--innodb-buffer-pool-size=16M", "--innodb-flush-log-at-trx-commit=0", *user]

    def start(self) -> None:
        if self.start_first:
            self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log, cwd=self.root)
            wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, timeout=60, what="mariadbd")
            self._create_login()
            self.start_first = False
        super().start()

    def _create_login(self) -> None:
        import pymysql

        def connect():
            try:
                return pymysql.connect(unix_socket=str(self.socket), user="root")
            except pymysql.err.OperationalError:
                return None

        conn = wait_for(connect, timeout=30, what="mariadbd socket")
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY %s", (self.password,))
            cur.execute(f"GRANT ALL ON `{self.database}`.* TO '{self.user}'@'127.0.0.1'")


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mariadb_server():
    server = MariaDBServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
