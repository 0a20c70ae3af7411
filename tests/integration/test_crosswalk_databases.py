"""Crosswalk maps served from real PostgreSQL and MariaDB servers (throwaway clusters of
tests/support/databases.py), and the SQL emitted for SQL Server, compiled only."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from sqlalchemy import event

from shared.adapters.crosswalk_databases import DatabaseCrosswalk, lookup_statement, make_engine
from shared.adapters.secrets import LocalSecrets
from shared.config import AppConfig, CrosswalkTable
from shared.config.crosswalk import CrosswalkSource
from shared.errors import CrosswalkMissing, Held, LookupUnavailable, RetryLater
from shared.morph import apply_actions
from shared.morph_services import MorphServices
from tests.support.databases import load_table, mariadb_server, postgres_server  # noqa: F401 (fixtures)
from tests.support.procs import free_port

ROWS = [  # issuer, MRN (mixed case), research id
    ("HOSP-A", "Mrn001", "R-0001"),
    ("HOSP-A", "mrn002", "R-0002"),
    ("HOSP-B", "Mrn001", "R-1001"),  # the same MRN at another issuer: another patient
    ("HOSP-A", "x' OR '1'='1-not", "R-9999"),
]
HOSTILE = "x' OR '1'='1"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _load(server) -> None:
    load_table(server, "Mrn_Map", ["issuer", "mrn", "research_id"], ROWS)  # mixed case: the code must quote it


@pytest.fixture(params=["postgresql", "mysql"])
def server(request):
    server = request.getfixturevalue("postgres_server" if request.param == "postgresql" else "mariadb_server")
    server.start()
    _load(server)
    server.kind = request.param
    yield server
    server.start()  # a test that stopped it


def _source(server) -> dict:
    return {"id": "mpi", "type": server.kind, "host": "127.0.0.1", "port": server.port, "database": server.database,
            "user": server.user, "password": "env:MPI_PASSWORD", "connect_timeout_s": 2}


def _crosswalk(server, *maps: dict, timer=None) -> DatabaseCrosswalk:
    config = AppConfig.model_validate({"crosswalk_sources": [_source(server)], "crosswalks": list(maps)})
    secrets = LocalSecrets({"MPI_PASSWORD": server.password})
    kwargs = {"timer": timer} if timer else {}
    return DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources, secrets, **kwargs)


def _count_queries(crosswalk: DatabaseCrosswalk) -> list[str]:
    statements: list[str] = []
    event.listen(crosswalk.engine("mpi"), "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: statements.append(statement))
    return statements


TWO_KEYS = {"id": "research", "source": "mpi", "table": "Mrn_Map", "keys": ["issuer", "mrn"], "value": "research_id"}


def test_two_column_key_looks_up_the_patient_of_that_issuer(server):
    crosswalk = _crosswalk(server, TWO_KEYS)
    try:
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"
        assert crosswalk.lookup("research", ("HOSP-B", "Mrn001")) == "R-1001"
        assert crosswalk.lookup("research", ("HOSP-A", "mrn002")) == "R-0002"
        assert crosswalk.lookup("research", ("HOSP-C", "Mrn001")) is None  # on_miss keep
        with pytest.raises(ValueError):
            crosswalk.lookup("research", "Mrn001")
    finally:
        crosswalk.close()


def test_case_insensitive_keys(server):
    exact = {**TWO_KEYS, "id": "exact"}
    folded = {**TWO_KEYS, "id": "folded", "case_insensitive": True}
    crosswalk = _crosswalk(server, exact, folded)
    try:
        assert crosswalk.lookup("folded", ("hosp-a", "MRN002")) == "R-0002"
        assert crosswalk.lookup("folded", ("HOSP-A", "mrn001")) == "R-0001"
        if server.kind == "postgresql":  # MariaDB's default collation ignores case by itself
            assert crosswalk.lookup("exact", ("hosp-a", "MRN002")) is None
    finally:
        crosswalk.close()


def test_parameterized_query_takes_a_hostile_key_as_a_value(server):
    query = {"id": "by-query", "source": "mpi", "keys": ["issuer", "mrn"], "case_insensitive": True,
             "query": 'SELECT research_id FROM "Mrn_Map" WHERE lower(issuer) = :issuer AND lower(mrn) = :mrn'
             if server.kind == "postgresql" else
             "SELECT research_id FROM `Mrn_Map` WHERE lower(issuer) = :issuer AND lower(mrn) = :mrn"}
    crosswalk = _crosswalk(server, query, {**TWO_KEYS, "id": "by-table"})
    try:
        assert crosswalk.lookup("by-query", ("HOSP-A", "MRN001")) == "R-0001"
        for table_id in ("by-query", "by-table"):
            assert crosswalk.lookup(table_id, ("HOSP-A", HOSTILE)) is None  # a miss, not every row
            assert crosswalk.lookup(table_id, (HOSTILE, HOSTILE)) is None
    finally:
        crosswalk.close()


def test_cache_serves_repeats_and_expires_after_its_ttl(server):
    clock = Clock()
    crosswalk = _crosswalk(server, {**TWO_KEYS, "cache_ttl_s": 60}, timer=clock)
    try:
        queries = _count_queries(crosswalk)
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"
        assert crosswalk.lookup("research", ("HOSP-Z", "none")) is None
        assert crosswalk.lookup("research", ("HOSP-Z", "none")) is None  # a miss is cached too
        lookups = [q for q in queries if "research_id" in q]
        assert len(lookups) == 2
        clock.now += 61
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"
        assert len([q for q in queries if "research_id" in q]) == 3
    finally:
        crosswalk.close()


def test_cache_is_bounded_by_its_size(server):
    crosswalk = _crosswalk(server, {**TWO_KEYS, "cache_size": 1})
    try:
        queries = _count_queries(crosswalk)
        for key in [("HOSP-A", "Mrn001"), ("HOSP-A", "mrn002"), ("HOSP-A", "Mrn001")]:
            crosswalk.lookup("research", key)
        assert len([q for q in queries if "research_id" in q]) == 3  # the first was evicted by the second
    finally:
        crosswalk.close()


def test_a_miss_is_none_and_the_maps_on_miss_decides_what_morph_writes(server):
    specs = [{**TWO_KEYS, "id": "fail", "on_miss": "fail"}, {**TWO_KEYS, "id": "hold", "on_miss": "hold"},
             {**TWO_KEYS, "id": "default", "on_miss": "default", "default": "UNMAPPED"}]
    crosswalk = _crosswalk(server, *specs)
    services = MorphServices(crosswalk=crosswalk, tables={s["id"]: CrosswalkTable.model_validate(s) for s in specs})
    key_tags = ["IssuerOfPatientID", "PatientID"]
    try:
        assert crosswalk.lookup("fail", ("HOSP-A", "Secret-MRN")) is None
        ds = Dataset()
        ds.IssuerOfPatientID, ds.PatientID = "HOSP-A", "Secret-MRN"
        with pytest.raises(CrosswalkMissing) as failed:
            apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "fail", "key_tags": key_tags}],
                          services)
        with pytest.raises(Held) as held:
            apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "hold", "key_tags": key_tags}],
                          services)
        assert "Secret-MRN" not in str(failed.value) + str(held.value)
        apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "default", "key_tags": key_tags}],
                      services)
        assert ds.PatientID == "UNMAPPED"
        ds.PatientID = "Mrn001"
        apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "fail", "key_tags": key_tags}],
                      services)
        assert ds.PatientID == "R-0001"
    finally:
        crosswalk.close()


def test_a_stopped_database_means_retry_later_and_lookups_resume_when_it_is_back(server):
    crosswalk = _crosswalk(server, {**TWO_KEYS, "cache_ttl_s": 0})
    try:
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"  # a pooled connection exists
        server.stop()
        for _ in range(2):  # the pooled connection, then a new one refused
            with pytest.raises(RetryLater) as down:
                crosswalk.lookup("research", ("HOSP-A", "Mrn001"))
            reason = str(down.value)
            assert "mpi" in reason and server.password not in reason and "Mrn001" not in reason
        server.start()
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"
    finally:
        server.start()
        crosswalk.close()


def test_a_wrong_password_is_retry_later_without_the_password(server):
    config = AppConfig.model_validate({"crosswalk_sources": [_source(server)], "crosswalks": [TWO_KEYS]})
    crosswalk = DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources,
                                  LocalSecrets({"MPI_PASSWORD": "not-the-password"}))
    try:
        with pytest.raises(RetryLater) as refused:
            crosswalk.lookup("research", ("HOSP-A", "Mrn001"))
        assert "not-the-password" not in str(refused.value)
    finally:
        crosswalk.close()


def test_in_memory_tables_still_work_beside_database_maps(request):
    server = request.getfixturevalue("postgres_server")
    server.kind = "postgresql"
    crosswalk = _crosswalk(server, {"id": "sites", "entries": {"St Mary": "SMH"}, "case_insensitive": True})
    assert crosswalk.lookup("sites", "ST MARY") == "SMH"
    assert crosswalk.lookup("sites", "elsewhere") is None
    with pytest.raises(KeyError):
        crosswalk.lookup("nowhere", "x")


def test_morph_crosswalk_action_writes_the_value_from_the_database(server):
    """The lookup behind the Crosswalk protocol: morph's `crosswalk` action over it."""
    crosswalk = _crosswalk(server, {"id": "mrn", "source": "mpi", "table": "Mrn_Map", "keys": ["mrn"],
                                    "value": "research_id", "case_insensitive": True},
                           {"id": "strict", "source": "mpi", "table": "Mrn_Map", "keys": ["mrn"],
                            "value": "research_id", "on_miss": "fail"})
    try:
        ds = Dataset()
        ds.PatientID = "MRN002"
        apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "mrn"}],
                      MorphServices(crosswalk=crosswalk))
        assert ds.PatientID == "R-0002"
        ds.PatientID = "unknown"
        with pytest.raises(CrosswalkMissing):
            apply_actions(ds, [{"action": "crosswalk", "tag": "PatientID", "table": "strict"}],
                          MorphServices(crosswalk=crosswalk, tables={"strict": CrosswalkTable.model_validate(
                              {"id": "strict", "source": "mpi", "table": "Mrn_Map", "keys": ["mrn"],
                               "value": "research_id", "on_miss": "fail"})}))
        assert ds.PatientID == "unknown"
    finally:
        crosswalk.close()


def test_cloud_sql_without_google_credentials_is_retry_later(monkeypatch, tmp_path):
    """The Cloud SQL path runs up to the connector, which needs credentials (none here)."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # no metadata server to ask either
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    config = AppConfig.model_validate({
        "crosswalk_sources": [{"id": "cloud", "type": "cloudsql", "instance": "p:europe-west1:mpi", "engine": "mysql",
                               "database": "mpi", "user": "reader", "password": "env:MPI_PASSWORD"}],
        "crosswalks": [{**TWO_KEYS, "source": "cloud"}]})
    crosswalk = DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources, LocalSecrets({"MPI_PASSWORD": "pw"}))
    with pytest.raises(RetryLater, match=r"'cloud' cannot be set up \(DefaultCredentialsError\)"):
        crosswalk.lookup("research", ("HOSP-A", "Mrn001"))


def _mssql_engine():
    source = CrosswalkSource.model_validate({"id": "sqlserver", "type": "mssql", "host": "127.0.0.1",
                                             "port": free_port(), "database": "mpi", "user": "reader",
                                             "password": "env:MPI_PASSWORD", "connect_timeout_s": 2})
    return make_engine(source, LocalSecrets({"MPI_PASSWORD": "pw"}))


def _mssql(spec: dict, **keys: str):
    """The statement as the mssql+pymssql engine of a source sends it, with the bound keys."""
    statement = lookup_statement(CrosswalkTable.model_validate(spec)).params(**keys)
    compiled = statement.compile(dialect=_mssql_engine().dialect, compile_kwargs={"render_postcompile": True})
    return " ".join(str(compiled).split()), compiled.params


def test_sql_server_unreachable_is_retry_later():
    """No SQL Server runs here: the pymssql path up to the login, refused."""
    engine = _mssql_engine()
    assert engine.dialect.name == "mssql" and engine.dialect.driver == "pymssql"
    config = AppConfig.model_validate({
        "crosswalk_sources": [{"id": "sqlserver", "type": "mssql", "host": "127.0.0.1", "port": free_port(),
                               "database": "mpi", "user": "reader", "password": "env:MPI_PASSWORD",
                               "connect_timeout_s": 2}],
        "crosswalks": [{**TWO_KEYS, "source": "sqlserver"}]})
    crosswalk = DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources, LocalSecrets({"MPI_PASSWORD": "pw"}))
    try:
        with pytest.raises(RetryLater, match=r"'sqlserver' did not answer .*, for table 'research'"):
            crosswalk.lookup("research", ("HOSP-A", "Mrn001"))
    finally:
        crosswalk.close()


def test_sql_server_select_is_quoted_top_1_with_bound_keys():
    sql, params = _mssql({**TWO_KEYS, "schema": "mpi", "table": "Mrn Map"}, k0="HOSP-A", k1=HOSTILE)
    assert sql == "SELECT TOP 1 research_id FROM mpi.[Mrn Map] WHERE issuer = %(k0)s AND mrn = %(k1)s"
    assert params == {"k0": "HOSP-A", "k1": HOSTILE}
    sql, _ = _mssql({**TWO_KEYS, "case_insensitive": True}, k0="a", k1="b")
    assert sql == ("SELECT TOP 1 research_id FROM [Mrn_Map] "
                   "WHERE lower(issuer) = lower(%(k0)s) AND lower(mrn) = lower(%(k1)s)")


def test_sql_server_query_binds_its_parameters():
    sql, params = _mssql({"id": "q", "source": "mpi", "keys": ["issuer", "mrn"],
                          "query": "SELECT TOP 1 research_id FROM mrn_map WHERE issuer = :issuer AND mrn = :mrn"},
                         issuer="HOSP-A", mrn=HOSTILE)
    assert sql == "SELECT TOP 1 research_id FROM mrn_map WHERE issuer = %(issuer)s AND mrn = %(mrn)s"
    assert params == {"issuer": "HOSP-A", "mrn": HOSTILE}


def test_config_rejects_incomplete_database_maps():
    with pytest.raises(ValueError, match="bound parameter for mrn"):
        CrosswalkTable.model_validate({"id": "q", "source": "mpi", "keys": ["mrn"],
                                       "query": "SELECT v FROM t WHERE mrn = 'x'"})
    with pytest.raises(ValueError, match="needs `value`"):
        CrosswalkTable.model_validate({"id": "t", "source": "mpi", "keys": ["mrn"], "table": "t"})
    with pytest.raises(ValueError, match="need a `source`"):
        CrosswalkTable.model_validate({"id": "t", "keys": ["mrn"], "table": "t", "value": "v"})
    with pytest.raises(ValueError, match="unknown crosswalk source"):
        AppConfig.model_validate({"crosswalks": [TWO_KEYS]})
    with pytest.raises(ValueError, match="needs `instance`"):
        CrosswalkSource.model_validate({"id": "c", "type": "cloudsql", "database": "d", "user": "u"})


def test_a_refused_login_is_told_apart_from_a_server_that_does_not_answer(server):
    config = AppConfig.model_validate({"crosswalk_sources": [_source(server)], "crosswalks": [TWO_KEYS]})
    wrong = DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources, LocalSecrets({"MPI_PASSWORD": "not-it"}))
    try:
        with pytest.raises(LookupUnavailable) as refused:
            wrong.lookup("research", ("HOSP-A", "Mrn001"))
        assert "refused the login" in str(refused.value) and refused.value.table == "research"
        assert "not-it" not in str(refused.value)
    finally:
        wrong.close()
    right = _crosswalk(server, {**TWO_KEYS, "cache_ttl_s": 0})
    try:
        server.stop()
        with pytest.raises(LookupUnavailable, match="did not answer"):
            right.lookup("research", ("HOSP-A", "Mrn001"))
    finally:
        server.start()
        right.close()
