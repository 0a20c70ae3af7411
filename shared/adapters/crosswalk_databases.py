"""Crosswalk maps read from SQL databases: the production :class:`shared.morph_services.Crosswalk`.

Each :class:`shared.config.CrosswalkSource` gets one pooled SQLAlchemy engine (psycopg
for PostgreSQL, PyMySQL for MySQL/MariaDB, pymssql or pyodbc for SQL Server, Google's
Cloud SQL Python connector for Cloud SQL), made on first use. Each database map
(:class:`shared.config.CrosswalkTable` with a ``source``) gets a TTL- and size-bounded
cache of its answers, misses included, so a stream of unknown keys does not query the
database once per instance.

Keys are always bound parameters: a ``table`` map is a Core ``SELECT value FROM table
WHERE key = :k0 ...`` over quoted ``table()``/``column()`` names; a ``query`` map is
``text(query)`` with one bound parameter per key. A key value never becomes SQL text.

A map with ``sync`` is answered from its copy in the document store
(:mod:`shared.crosswalk_sync`, given ``docs``) once a sync of it has completed, never
from the database; until then (the first sync still running or failed, or no ``docs``)
it is queried like the others, so a new map works from its first instance.

Keys are often PHI (a Patient ID): they are never logged nor put into messages. A
database error raises :class:`shared.errors.RetryLater` naming the source and the
error's type only (a driver's message may quote the connection string or a value).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from cachetools import TTLCache
from sqlalchemy import URL, and_, bindparam, column, create_engine, func, select, table, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import Executable

from shared.crosswalk_sync import normalized_keys, source_failure, synced_salt, synced_value
from shared.errors import LookupUnavailable, RetryLater, SecretError
from shared.morph_services import InMemoryCrosswalk

if TYPE_CHECKING:  # pragma: no cover
    from shared.config import CrosswalkSource, CrosswalkTable
    from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)

# SQLAlchemy dialect+driver of each source type reached over TCP
DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mssql": "mssql+pymssql"}
# Cloud SQL: the connector's DB-API driver for each engine, and SQLAlchemy's dialect for it
CLOUDSQL_DRIVERS = {"postgresql": ("pg8000", "postgresql+pg8000"), "mysql": ("pymysql", "mysql+pymysql"),
                    "mssql": ("pytds", "mssql+pytds")}
_MISSING = object()


def lookup_statement(spec: "CrosswalkTable") -> Executable:
    """The statement that looks one key up in a database map, its keys bound as
    ``k0``, ``k1``... (``table`` maps) or under their own names (``query`` maps)."""
    if spec.query is not None:
        return text(spec.query).bindparams(*(bindparam(name) for name in spec.keys))
    source = table(spec.table, schema=spec.schema_)
    conditions = []
    for n, name in enumerate(spec.keys):
        col, param = column(name), bindparam(f"k{n}")
        conditions.append(func.lower(col) == func.lower(param) if spec.case_insensitive else col == param)
    return select(column(spec.value)).select_from(source).where(and_(*conditions)).limit(1)


def _as_keys(key: str | Sequence[str]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


class _Map:
    """One database map: its statement, its cache and the parameters of a key."""

    def __init__(self, spec: "CrosswalkTable", timer: Callable[[], float]):
        self.spec = spec
        self.statement = lookup_statement(spec)
        self.cache: TTLCache | None = (TTLCache(spec.cache_size, spec.cache_ttl_s, timer=timer)
                                       if spec.cache_ttl_s > 0 else None)
        self.lock = threading.Lock()
        self.salt: str | None = None  # a synced map's, once its copy answers (shared.crosswalk_sync)

    def cache_key(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        return normalized_keys(self.spec, keys)

    def parameters(self, keys: tuple[str, ...]) -> dict[str, str]:
        if self.spec.query is not None:
            values = [k.lower() for k in keys] if self.spec.case_insensitive else keys
            return dict(zip(self.spec.keys, values))
        return {f"k{n}": k for n, k in enumerate(keys)}


class DatabaseCrosswalk:
    """The crosswalk over every configured map: in-memory tables from their entries,
    database maps through their source (see the module docstring).

    ``lookup`` returns the value, or None on a miss (the map's ``on_miss`` is applied by
    :class:`shared.morph_services.MorphServices`). ``timer`` is the cache's clock;
    ``docs`` the document store holding the copies of synced maps (none: every map is
    queried)."""

    def __init__(self, tables: Iterable["CrosswalkTable"], sources: Iterable["CrosswalkSource"],
                 secrets: "Secrets", *, timer: Callable[[], float] = time.monotonic,
                 docs: "DocumentStore | None" = None):
        tables = list(tables)
        self._memory = InMemoryCrosswalk(t for t in tables if t.source is None)
        self._maps = {t.id: _Map(t, timer) for t in tables if t.source is not None}
        self._sources = {s.id: s for s in sources}
        for spec in tables:
            if spec.source is not None and spec.source not in self._sources:
                raise KeyError(f"crosswalk table {spec.id!r} names unknown source {spec.source!r}")
        self._secrets = secrets
        self._docs = docs
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()

    # --- the Crosswalk protocol -------------------------------------------------------

    def answer(self, table_id: str, key: str | Sequence[str], *, fresh: bool = False) -> tuple[str | None, bool]:
        entry = self._maps.get(table_id)
        if entry is None:
            return self._memory.answer(table_id, key)
        keys = _as_keys(key)
        if len(keys) != len(entry.spec.keys):
            raise ValueError(f"crosswalk table {table_id!r} takes {len(entry.spec.keys)} key(s), got {len(keys)}")
        try:
            return self._cached_or_queried(entry, keys, fresh=fresh)
        except RetryLater as exc:
            raise LookupUnavailable(str(exc), table=table_id, delay_s=exc.delay_s) from None

    def lookup(self, table_id: str, key: str | Sequence[str]) -> str | None:
        """The value alone (:meth:`answer`)."""
        return self.answer(table_id, key)[0]

    # --- the rest ---------------------------------------------------------------------

    def engine(self, source_id: str) -> Engine:
        """The pooled engine of a source, made on first use."""
        with self._engines_lock:
            engine = self._engines.get(source_id)
            if engine is None:
                try:
                    engine = make_engine(self._sources[source_id], self._secrets)
                except SecretError:
                    raise
                except Exception as exc:  # a driver not installed, no Google credentials: named by type only
                    raise RetryLater(f"crosswalk source {source_id!r} cannot be set up ({type(exc).__name__})") from None
                self._engines[source_id] = engine
            return engine

    def close(self) -> None:
        """Close every pooled connection (a new config version makes a new crosswalk)."""
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
                connector = _CLOUDSQL_CONNECTORS.pop(engine, None)
                if connector is not None:
                    connector.close()
            self._engines.clear()

    def _cached_or_queried(self, entry: _Map, keys: tuple[str, ...], *, fresh: bool = False) -> tuple[str | None, bool]:
        if entry.cache is None:
            return self._answer(entry, keys), False
        cache_key = entry.cache_key(keys)
        with entry.lock:
            value = entry.cache.get(cache_key, _MISSING)
        if value is not _MISSING and not (fresh and value is None):  # fresh: a cached miss is asked again
            return value, True
        value = self._answer(entry, keys)
        with entry.lock:
            entry.cache[cache_key] = value
        return value, False

    def _answer(self, entry: _Map, keys: tuple[str, ...]) -> str | None:
        """From the synced copy when there is one, else from the database."""
        spec = entry.spec
        if self._docs is None or not spec.synced:
            return self._query(entry, keys)
        try:
            if entry.salt is None:  # until a sync has completed; a copy, once there, stays
                entry.salt = synced_salt(self._docs, spec)
            if entry.salt is not None:
                return synced_value(self._docs, spec, entry.salt, keys)
        except Exception as exc:  # noqa: BLE001 - the document store is down: a retry later, named by type
            raise RetryLater(f"crosswalk table {spec.id!r}: the document store did not answer "
                             f"({type(exc).__name__})") from None
        return self._query(entry, keys)

    def _query(self, entry: _Map, keys: tuple[str, ...]) -> str | None:
        spec = entry.spec
        try:
            with self.engine(spec.source).connect() as conn:
                row = conn.execute(entry.statement, entry.parameters(keys)).first()
        except SecretError as exc:  # names the reference, never the value
            raise RetryLater(f"crosswalk source {spec.source!r}: {exc}") from None
        except (SQLAlchemyError, OSError) as exc:
            raise RetryLater(f"{source_failure(spec.source, exc)}, for table {spec.id!r}") from None
        if row is None or row[0] is None:
            return None
        return str(row[0])


def make_engine(source: "CrosswalkSource", secrets: "Secrets") -> Engine:
    """A pooled SQLAlchemy engine for ``source``; its password read through ``secrets``.
    ``pool_pre_ping`` replaces connections the server dropped (a restart) before use.
    Autocommit: a lookup is one SELECT, without the BEGIN and ROLLBACK round trips
    around it (half the time of an uncached lookup, bench/results/crosswalk.md); a
    sync asks for its own isolation level."""
    password = secrets.text(source.password) if source.password else None
    pool = {"pool_size": source.pool_size, "max_overflow": source.pool_size, "pool_pre_ping": True,
            "pool_timeout": source.connect_timeout_s, "pool_recycle": 1800, "isolation_level": "AUTOCOMMIT"}
    if source.type == "cloudsql":
        return _cloudsql_engine(source, password, pool)
    timeout = max(1, int(source.connect_timeout_s))
    connect_args = {"postgresql": {"connect_timeout": timeout},
                    "mysql": {"connect_timeout": timeout, "read_timeout": 30, "write_timeout": 30},
                    "mssql": {"login_timeout": timeout, "timeout": 30}}[source.type]
    url = URL.create(DRIVERS[source.type], username=source.user, password=password, host=source.host,
                     port=source.effective_port, database=source.database)
    return create_engine(url, connect_args=connect_args, **pool)


def _cloudsql_engine(source: "CrosswalkSource", password: str | None, pool: dict) -> Engine:
    """Cloud SQL through Google's connector (IAM-authorized TLS to the instance, the
    service account's default credentials); the connector's own driver for the engine
    (pg8000, PyMySQL or python-tds, installed beside it). Not run by the tests (no
    instance here)."""
    from google.cloud.sql.connector import Connector, IPTypes  # noqa: PLC0415 (optional dependency)

    driver, dialect = CLOUDSQL_DRIVERS[source.engine]
    ip_type = {"public": IPTypes.PUBLIC, "private": IPTypes.PRIVATE, "psc": IPTypes.PSC}[source.ip_type]
    connector = Connector(ip_type=ip_type, timeout=max(1, int(source.connect_timeout_s)), refresh_strategy="lazy")

    def connect():
        return connector.connect(source.instance, driver, user=source.user, password=password, db=source.database)

    engine = create_engine(f"{dialect}://", creator=connect, **pool)
    _CLOUDSQL_CONNECTORS[engine] = connector
    return engine


# the connector of each Cloud SQL engine, closed with it (DatabaseCrosswalk.close)
_CLOUDSQL_CONNECTORS: "weakref.WeakKeyDictionary[Engine, object]" = weakref.WeakKeyDictionary()
