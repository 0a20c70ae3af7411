"""Config documents: validation names the bad field; YAML, env and document round trips."""

import subprocess
import sys

import pytest

from shared.config import ConfigError, expand_env, from_documents, load_yaml, parse_config, to_documents
from tests.support.procs import REPO

BASE = {
    "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
    "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}],
}


def with_rule(**rule):
    return {**BASE, "rulesets": [{"id": "main", "rules": [{"id": "r1", "destinations": ["archive"], **rule}]}]}


@pytest.mark.parametrize("doc, field, words", [
    (with_rule(when={"tag": "PatientNmae", "value": "x"}), "rulesets.0.rules.0.when.tag.tag", "unknown DICOM keyword"),
    (with_rule(when={"all": []}), "rulesets.0.rules.0.when.all.all", "at least 1"),
    (with_rule(when={"bogus": 1}), "rulesets.0.rules.0.when", "needs one of the keys"),
    (with_rule(when={"tag": "Modality", "op": "eq"}), "rulesets.0.rules.0.when.tag", "needs a value"),
    (with_rule(actions=[{"action": "set", "tag": "NoSuchKeyword", "value": "1"}]),
     "rulesets.0.rules.0.actions.0.set.tag", "unknown DICOM keyword"),
    (with_rule(actions=[{"action": "explode", "tag": "PatientID"}]), "rulesets.0.rules.0.actions.0", "explode"),
    (with_rule(destinations=["nowhere"]), "rulesets[main].rules[r1].destinations", "unknown destination 'nowhere'"),
    ({**BASE, "destinations": [{"id": "p", "type": "cstore", "ae_title": "X" * 17, "host": "h", "port": 104}]},
     "destinations.0.cstore.ae_title", "at most 16"),
    ({**BASE, "destinations": BASE["destinations"] * 2}, "destinations", "duplicate id"),
    ({**BASE, "listeners": [{"id": "a", "port": 104}, {"id": "b", "host": "127.0.0.1", "port": 104}]},
     "listeners[b].port", "port 104 is already taken"),
    ({**BASE, "rulesets": [{"id": "main", "rules": [{"id": "r1"}, {"id": "r1"}]}]},
     "rulesets[main].rules[r1].id", "duplicate id 'r1'"),
])
def test_bad_config_is_refused_naming_the_field(doc, field, words):
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    message = str(err.value)
    assert field in message and words in message, message


def test_every_problem_is_named_at_once_references_included():
    """A field error in one document does not hide an unknown reference in another."""
    doc = {"listeners": [{"id": "a", "port": 104}, {"id": "b", "port": 104}],
           "destinations": [{"id": "p", "type": "cstore", "ae_title": "X" * 17, "host": "h", "port": 104}],
           "schedules": [{"id": "nights", "timezone": "Mars/Olympus"}],
           "rulesets": [{"id": "main", "rules": [{"id": "r1", "destinations": ["nowhere"], "schedule": "never"},
                                                 {"id": "r1", "actions": [{"action": "crosswalk", "tag": "PatientID",
                                                                            "table": "missing"}]}]}],
           "default_route": {"destinations": ["gone"]}}
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert sorted(p["path"] for p in err.value.problems) == sorted([
        "destinations[p].ae_title", "schedules[nights].timezone", "listeners[b].port",
        "rulesets[main].rules[r1].id", "rulesets[main].rules[r1].schedule",
        "rulesets[main].rules[r1].destinations[0]", "rulesets[main].rules[r1].actions[0].table",
        "default_route.destinations[0]"]), err.value.errors
    assert len(err.value.errors) == 8 and "destinations.0.cstore.ae_title" in str(err.value)


@pytest.mark.parametrize("doc, path", [
    ({**BASE, "destinations": [{"id": {}, "type": "filesystem", "path": "out"}, BASE["destinations"][0]]},
     "destinations[0].id"),
    ({**BASE, "default_route": {"destinations": [{}]}}, "default_route.destinations[0]"),
    (with_rule(destinations=[["archive"]]), "rulesets[main].rules[r1].destinations[0]"),
    (with_rule(schedule={"id": "nights"}), "rulesets[main].rules[r1].schedule"),
    (with_rule(actions=[{"action": "crosswalk", "tag": "PatientID", "table": {}}]),
     "rulesets[main].rules[r1].actions[0].table"),
    ({**BASE, "default_route": {"destinations": "archive"}}, "default_route.destinations"),
])
def test_a_mapping_or_list_where_a_name_belongs_is_a_field_error(doc, path):
    """As a schema fuzzer or a slip in YAML gives it: named, not a crash in the references check."""
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert [p["path"] for p in err.value.problems] == [path], err.value.errors


def test_an_empty_config_is_refused_where_a_whole_one_is_needed():
    assert parse_config({}).destinations == []  # a part of a config, as the stages' tests use
    with pytest.raises(ConfigError, match="no destination is configured"):
        parse_config({}, complete=True)
    with pytest.raises(ConfigError, match="nothing receives instances"):
        parse_config({**BASE, "stow": {"enabled": False}}, complete=True)
    assert parse_config({**BASE, "listeners": [{"id": "a"}], "stow": {"enabled": False}}, complete=True)


def test_documents_round_trip():
    config = parse_config(with_rule(when={"any": [{"tag": "(0008,0060)", "value": "CT"},
                                                   {"not": {"association": "calling_ae", "value": "MOD1"}}]},
                                    actions=[{"action": "set", "tag": "00080080", "value": "X"}]))
    assert from_documents(to_documents(config)) == config


def test_env_expansion():
    assert expand_env("${A}-${B:-dflt}-${C:-}", {"A": "1"}) == "1-dflt-"
    with pytest.raises(ConfigError, match="MISSING is not set"):
        expand_env("${MISSING}", {})


def test_shipped_example_is_valid(monkeypatch):
    monkeypatch.delenv("AXIOM_CT_PEER_ENABLED", raising=False)
    config = load_yaml(REPO / "examples" / "local.yaml")
    assert config.listeners[0].port == 11112 and config.listeners[0].ae_title == "AXIOM"
    def ct_rule(cfg):
        return next(r for rs in cfg.rulesets for r in rs.rules if r.id == "ct-to-peer")

    # off by default as a rule, not as a destination: a disabled destination would hold every CT
    assert not ct_rule(config).enabled and config.destination("ct-peer").enabled
    monkeypatch.setenv("AXIOM_CT_PEER_ENABLED", "true")
    monkeypatch.setenv("AXIOM_CT_PEER_PORT", "4242")
    config = load_yaml(REPO / "examples" / "local.yaml")
    assert ct_rule(config).enabled and config.destination("ct-peer").port == 4242


def test_config_survives_the_document_store(tmp_path):
    from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
    from shared.runtime.configcache import load_config

    config = parse_config({
        **with_rule(schedule="nights"),
        "schedules": [{"id": "nights", "start": "20:00", "end": "06:00", "timezone": "Europe/Berlin"}],
        "crosswalks": [{"id": "sites", "entries": {"A": "B"}}],
        "sources": [{"id": "pacs", "type": "dimse_poller", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "stow": {"api_keys": "env:AXIOM_STOW_KEYS"},
    })
    docs = SQLiteDocumentStore(SQLiteDatabase(tmp_path / "state.db"))
    docs.replace_collections(to_documents(config))
    assert load_config(docs) == config


def test_the_config_package_imports_nothing_above_it():
    """Config is data: loading it must not pull in senders, runtimes, stages or network
    clients (a fresh interpreter, so other tests' imports do not hide one)."""
    probe = "import sys, shared.config; print('\\n'.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split())
    ours = {m for m in loaded if m.split(".")[0] in ("shared", "scp_gateway", "functions")}
    assert "shared.config.loading" in ours
    assert {m for m in ours if not m.startswith("shared.config")} <= {
        "shared", "shared.dicom", "shared.dicom.tags", "shared.dicom.values", "shared.messages", "shared.regex",
        "shared.templates"}
    clients = {m for m in loaded if m.split(".")[0] in ("pynetdicom", "flask", "functions_framework")
               or m.startswith("google.cloud.")}
    assert clients == set()
