"""Database crosswalk maps synced into the document store (shared/crosswalk_sync.py) and
served from there, against real PostgreSQL and MariaDB servers (tests/support/databases.py)
and the SQLite document store of the embedded runtime."""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy
from sqlalchemy import event

from shared import cli_progress
from shared.adapters.crosswalk_databases import DatabaseCrosswalk
from shared.adapters.secrets import LocalSecrets
from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
from shared.cli import main
from shared.config import AppConfig, CrosswalkTable, dump_yaml
from shared.crosswalk_sync import ROWS, SYNCS, CrosswalkSyncer, run_due_syncs, sync_map, sync_state
from tests.integration import test_crosswalk_databases
from tests.integration.test_crosswalk_databases import ROWS as TABLE_ROWS
from tests.integration.test_crosswalk_databases import TWO_KEYS, _source
from tests.support.databases import mariadb_server, postgres_server  # noqa: F401 (fixtures)
from tests.support.procs import wait_for

server = test_crosswalk_databases.server  # the fixture: PostgreSQL and MariaDB, each with the table loaded
SYNCED = {**TWO_KEYS, "sync": {"every_s": 600}, "cache_ttl_s": 0}  # no cache: every lookup reads the copy
KEY_VALUES = {v for issuer, mrn, _ in TABLE_ROWS for v in (issuer, mrn)}


@pytest.fixture
def docs(tmp_path):
    return SQLiteDocumentStore(SQLiteDatabase(tmp_path / "state.db"))


def _config(server, *maps: dict) -> AppConfig:
    return AppConfig.model_validate({"crosswalk_sources": [_source(server)], "crosswalks": list(maps)})


def _crosswalk(server, config: AppConfig, docs=None) -> DatabaseCrosswalk:
    return DatabaseCrosswalk(config.crosswalks, config.crosswalk_sources,
                             LocalSecrets({"MPI_PASSWORD": server.password}), docs=docs)


def _execute(server, *statements: tuple[str, dict]) -> None:
    engine = sqlalchemy.create_engine(server.url())
    quoted = '"Mrn_Map"' if server.kind == "postgresql" else "`Mrn_Map`"
    with engine.begin() as conn:
        for sql, params in statements:
            conn.execute(sqlalchemy.text(sql.replace("Mrn_Map", quoted)), params)
    engine.dispose()


def _counts(report) -> dict:
    return {k: getattr(report, k) for k in ("added", "changed", "removed", "unchanged", "rows_read", "skipped")}


def test_sync_copies_the_table_and_the_next_sync_reports_exactly_what_changed(server, docs):
    config = _config(server, SYNCED)
    crosswalk = _crosswalk(server, config)
    progress = []
    try:
        first = sync_map(docs, crosswalk, config.crosswalks[0], progress=lambda done, total: progress.append((done, total)))
        assert first.error is None and first.total == 4
        assert _counts(first) == {"added": 4, "changed": 0, "removed": 0, "unchanged": 0, "rows_read": 4, "skipped": 0}
        assert progress[0] == (0, 4) and progress[-1] == (4, 4)
        assert docs.count(ROWS) == 4
        _execute(server,
                 ("UPDATE Mrn_Map SET research_id = 'R-0002-NEW' WHERE mrn = :m", {"m": "mrn002"}),
                 ("DELETE FROM Mrn_Map WHERE issuer = :i", {"i": "HOSP-B"}),
                 ("INSERT INTO Mrn_Map (issuer, mrn, research_id) VALUES (:i, :m, :r)",
                  {"i": "HOSP-C", "m": "Mrn777", "r": "R-7777"}))
        second = sync_map(docs, crosswalk, config.crosswalks[0])
        assert _counts(second) == {"added": 1, "changed": 1, "removed": 1, "unchanged": 2, "rows_read": 4,
                                   "skipped": 0}
        third = sync_map(docs, crosswalk, config.crosswalks[0])
        assert _counts(third) == {"added": 0, "changed": 0, "removed": 0, "unchanged": 4, "rows_read": 4,
                                  "skipped": 0}
        state = sync_state(docs, "research")
        assert state["error"] is None and state["last"]["unchanged"] == 4 and "salt" not in state
        served = _crosswalk(server, config, docs)
        assert served.lookup("research", ("HOSP-A", "mrn002")) == "R-0002-NEW"
        assert served.lookup("research", ("HOSP-C", "Mrn777")) == "R-7777"
        assert served.lookup("research", ("HOSP-B", "Mrn001")) is None  # removed
    finally:
        crosswalk.close()


def test_lookups_are_answered_from_the_copy_while_the_database_is_stopped(server, docs):
    config = _config(server, SYNCED)
    crosswalk = _crosswalk(server, config, docs)
    statements: list[str] = []
    event.listen(crosswalk.engine("mpi"), "before_cursor_execute", lambda c, cur, sql, *rest: statements.append(sql))
    try:
        # before the first sync the database answers
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"
        assert len(statements) == 1
        sync_map(docs, crosswalk, config.crosswalks[0])
        statements.clear()
        server.stop()
        assert crosswalk.lookup("research", ("HOSP-A", "Mrn001")) == "R-0001"
        assert crosswalk.lookup("research", ("HOSP-B", "Mrn001")) == "R-1001"
        assert crosswalk.lookup("research", ("HOSP-A", "x' OR '1'='1-not")) == "R-9999"
        assert crosswalk.lookup("research", ("HOSP-A", "unknown")) is None
        assert statements == []  # not one query: the server is down and nothing noticed
        # a new crosswalk (a new config version) serves the copy from its first lookup
        fresh = _crosswalk(server, config, docs)
        assert fresh.lookup("research", ("HOSP-A", "mrn002")) == "R-0002"
    finally:
        server.start()
        crosswalk.close()


def test_case_insensitive_keys_are_normalized_alike_at_sync_and_lookup(server, docs):
    folded = {**SYNCED, "id": "folded", "case_insensitive": True}
    exact = {**SYNCED, "id": "exact"}
    _execute(server, ("INSERT INTO Mrn_Map (issuer, mrn, research_id) VALUES (:i, :m, :r)",
                      {"i": "hosp-a", "m": "MRN001", "r": "R-0001-DUP"}))  # one key, case aside
    config = _config(server, folded, exact)
    crosswalk = _crosswalk(server, config, docs)
    try:
        report = sync_map(docs, crosswalk, config.crosswalks[0])
        assert (report.rows_read, report.added, report.skipped) == (5, 4, 1)
        assert sync_map(docs, crosswalk, config.crosswalks[1]).added == 5
        server.stop()
        assert crosswalk.lookup("folded", ("hosp-a", "MRN002")) == "R-0002"
        assert crosswalk.lookup("folded", ("HOSP-B", "mrn001")) == "R-1001"
        assert crosswalk.lookup("folded", ("Hosp-A", "mRn001")) in {"R-0001", "R-0001-DUP"}
        # an exact map compares exactly in its copy (MariaDB's own collation aside)
        assert crosswalk.lookup("exact", ("hosp-a", "MRN002")) is None
        assert crosswalk.lookup("exact", ("hosp-a", "MRN001")) == "R-0001-DUP"
    finally:
        server.start()
        crosswalk.close()


def test_a_sync_with_the_database_down_records_the_error_and_keeps_the_copy(server, docs):
    config = _config(server, SYNCED)
    crosswalk = _crosswalk(server, config, docs)
    try:
        assert sync_map(docs, crosswalk, config.crosswalks[0]).error is None
        synced_at = docs.get(SYNCS, "research")["synced_at"]
        server.stop()
        failed = sync_map(docs, crosswalk, config.crosswalks[0])
        assert failed.error and "'mpi' did not answer" in failed.error
        assert server.password not in failed.error
        assert _counts(failed)["removed"] == 0 and docs.count(ROWS) == 4
        state = docs.get(SYNCS, "research")
        assert state["error"] == failed.error and state["synced_at"] == synced_at
        assert crosswalk.lookup("research", ("HOSP-A", "mrn002")) == "R-0002"  # the copy still answers
        assert "sync failed" in failed.line()
        server.start()
        again = sync_map(docs, crosswalk, config.crosswalks[0])
        assert again.error is None and again.unchanged == 4
        assert docs.get(SYNCS, "research")["error"] is None
    finally:
        server.start()
        crosswalk.close()


def test_keys_never_appear_in_logs_or_document_ids(server, docs, caplog):
    caplog.set_level(logging.DEBUG)
    other = {**SYNCED, "id": "other"}
    config = _config(server, SYNCED, other)
    crosswalk = _crosswalk(server, config, docs)
    try:
        for spec in config.crosswalks:
            sync_map(docs, crosswalk, spec)
        server.stop()
        sync_map(docs, crosswalk, config.crosswalks[0])  # a failure is logged too
        crosswalk.lookup("research", ("HOSP-A", "Mrn001"))
        crosswalk.lookup("research", ("HOSP-A", "Not-There-9"))
    finally:
        server.start()
        crosswalk.close()
    assert "crosswalk map research" in caplog.text
    for value in [*KEY_VALUES, "Not-There-9"]:
        assert value not in caplog.text
    rows = docs.list(ROWS)
    assert len(rows) == 8
    for doc_id, doc in rows.items():
        assert not any(value.lower() in doc_id.lower() for value in KEY_VALUES)
        assert set(doc) == {"map", "value"}
    # the same key in two maps: two unrelated ids (each map has its own salt)
    research = {i.split("-")[1] for i, d in rows.items() if d["map"] == "research"}
    others = {i.split("-")[1] for i, d in rows.items() if d["map"] == "other"}
    assert len(research) == len(others) == 4 and not research & others


def test_run_due_syncs_syncs_a_map_when_its_interval_has_passed(server, docs):
    config = _config(server, SYNCED, {**TWO_KEYS, "id": "live"})  # `live` has no sync
    crosswalk = _crosswalk(server, config)
    try:
        first = run_due_syncs(docs, crosswalk, config, now=1_000_000.0)
        assert [(r.map, r.added) for r in first] == [("research", 4)]
        assert run_due_syncs(docs, crosswalk, config, now=1_000_000.0 + 599) == []
        assert [r.unchanged for r in run_due_syncs(docs, crosswalk, config, now=1_000_000.0 + 600)] == [4]
        # another value column: the copy is of another shape, synced at once and not served before
        changed = _config(server, {**SYNCED, "value": "mrn"})
        lookups = _crosswalk(server, changed, docs)
        assert lookups.lookup("research", ("HOSP-A", "mrn002")) == "mrn002"  # from the database
        reports = run_due_syncs(docs, crosswalk, changed, now=1_000_000.0 + 601)
        assert [(r.changed, r.unchanged) for r in reports] == [(4, 0)]
    finally:
        crosswalk.close()


def test_the_background_syncer_syncs_due_maps_until_stopped(server, docs):
    config = _config(server, SYNCED)
    stopping = threading.Event()
    syncer = CrosswalkSyncer(docs, lambda: config, LocalSecrets({"MPI_PASSWORD": server.password}))
    thread = threading.Thread(target=syncer.run, args=(stopping,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: (docs.get(SYNCS, "research") or {}).get("synced_at"), timeout=30, what="a first sync")
        assert docs.count(ROWS) == 4
    finally:
        stopping.set()
        thread.join(10)
    assert not thread.is_alive()


def test_cli_sync_prints_progress_and_the_report(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_progress, "on_terminal", lambda: True)  # the bar is drawn on a terminal only
    monkeypatch.setenv("MPI_PASSWORD", server.password)
    config_file = tmp_path / "axiom.yaml"
    config_file.write_text(dump_yaml(_config(server, SYNCED)))
    data_dir = str(tmp_path / "data")
    assert main(["crosswalk", "sync", "--config", str(config_file), "--data-dir", data_dir]) == 0
    out, err = capsys.readouterr()
    assert "research: 4 row(s) read, 4 added, 0 changed, 0 removed, 0 unchanged" in out
    assert "research [" + "#" * 30 + "] 4/4 rows" in err
    assert main(["crosswalk", "sync", "--map", "research", "--config", str(config_file), "--data-dir", data_dir]) == 0
    assert "4 unchanged" in capsys.readouterr().out

    assert main(["crosswalk", "sync", "--map", "nope", "--config", str(config_file), "--data-dir", data_dir]) == 2
    err = capsys.readouterr().err
    assert err == "axiom-flow: no crosswalk map 'nope' in the config\n"
    server.stop()
    try:
        assert main(["crosswalk", "sync", "--config", str(config_file), "--data-dir", data_dir]) == 1
        out, err = capsys.readouterr()
        assert "research: sync failed: crosswalk source 'mpi' did not answer" in out
        assert "Traceback" not in err
    finally:
        server.start()


def test_config_refuses_sync_of_a_query_map_and_of_an_in_memory_table():
    with pytest.raises(ValueError, match="`sync` needs a `table` map"):
        CrosswalkTable.model_validate({"id": "q", "source": "mpi", "keys": ["mrn"], "sync": {"every_s": 600},
                                       "query": "SELECT v FROM t WHERE mrn = :mrn"})
    with pytest.raises(ValueError, match="need a `source`"):
        CrosswalkTable.model_validate({"id": "m", "entries": {"a": "b"}, "sync": {}})
    table = CrosswalkTable.model_validate({**TWO_KEYS, "sync": {"every_s": 600, "enabled": False}})
    assert not table.synced
