"""``serve --config FILE`` on a data dir that already holds a config: the changes made
through the API survive a restart with the same file; a file edited since it was
last loaded replaces the stored config, and the audit log keeps what it replaced."""

from __future__ import annotations

import logging

import pytest

from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
from shared.api.audit import AUDIT
from shared.config import parse_config
from shared.config.store import ConfigStore, load_config_file
from shared.runtime.local import EmbeddedRuntime


def _file(institution: str) -> dict:
    return {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
            "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"], "actions": [
                {"action": "set", "tag": "InstitutionName", "value": institution}]}]}]}


@pytest.fixture
def docs(tmp_path):
    return SQLiteDocumentStore(SQLiteDatabase(tmp_path / "state.db"))


def _institution(docs) -> str:
    return ConfigStore(docs).config().rulesets[0].rules[0].actions[0].value


def _change_through_the_api(docs, value: str) -> None:
    def change(ruleset: dict) -> dict:
        ruleset["rules"][0]["actions"][0]["value"] = value
        return ruleset

    ConfigStore(docs).write("rulesets", "main", change)


def test_the_file_seeds_an_empty_store_and_api_changes_survive_a_restart_with_the_same_file(docs):
    assert load_config_file(docs, parse_config(_file("FILE")), name="local.yaml") == ("loaded", None)
    _change_through_the_api(docs, "API")
    assert load_config_file(docs, parse_config(_file("FILE")), name="local.yaml") == ("kept", None)
    assert _institution(docs) == "API"


def test_a_file_edited_since_it_was_loaded_replaces_the_stored_config(docs):
    load_config_file(docs, parse_config(_file("FILE")), name="local.yaml")
    _change_through_the_api(docs, "API")
    outcome, replaced = load_config_file(docs, parse_config(_file("EDITED")), name="local.yaml")
    assert outcome == "replaced" and "value: API" in replaced
    assert _institution(docs) == "EDITED"
    assert load_config_file(docs, parse_config(_file("EDITED")), name="local.yaml")[0] == "kept"


def test_a_store_imported_before_any_file_was_loaded_is_kept(docs):
    ConfigStore(docs).import_yaml("rulesets: []\ndestinations: [{id: a, type: filesystem, path: a}]\n"
                                  "default_route: {destinations: [a]}\n", name="imported.yaml")
    assert load_config_file(docs, parse_config(_file("FILE")), name="local.yaml") == ("kept", None)
    assert [d.id for d in ConfigStore(docs).config().destinations] == ["a"]
    assert load_config_file(docs, parse_config(_file("EDITED")), name="local.yaml")[0] == "replaced"


def test_the_runtime_runs_the_stored_config_and_audits_a_replacement(tmp_path, caplog):
    data = tmp_path / "data"
    EmbeddedRuntime(parse_config(_file("FILE")), data, http_port=None, poll_sources=False, config_name="local.yaml")
    docs = SQLiteDocumentStore(SQLiteDatabase(data / "state.db"))
    _change_through_the_api(docs, "API")
    rt = EmbeddedRuntime(parse_config(_file("FILE")), data, http_port=None, poll_sources=False,
                         config_name="local.yaml")
    assert rt.config().rulesets[0].rules[0].actions[0].value == "API"
    assert docs.list(AUDIT) == {}
    with caplog.at_level(logging.WARNING, logger="shared.runtime.local"):
        rt = EmbeddedRuntime(parse_config(_file("EDITED")), data, http_port=None, poll_sources=False,
                             config_name="local.yaml")
    assert rt.config().rulesets[0].rules[0].actions[0].value == "EDITED"
    assert "local.yaml changed since it was last loaded" in caplog.text
    [entry] = docs.list(AUDIT).values()
    assert (entry["action"], entry["via"]) == ("config.import", "cli") and "value: API" in entry["before"]
