"""``axiom-flow rules test``: the dry-run explains matches and shows the tag diff."""

import json

import yaml
from pydicom.data import get_testdata_file

from shared.cli import main

CONFIG = {
    "destinations": [{"id": "archive", "type": "filesystem", "path": "out"},
                     {"id": "pacs", "type": "cstore", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
    "rulesets": [{"id": "site", "mode": "FIRST_MATCH", "rules": [
        {"id": "mr-only", "when": {"tag": "Modality", "value": "MR"}, "destinations": ["pacs"]},
        {"id": "ct-from-scanner",
         "when": {"all": [{"tag": "Modality", "value": "CT"}, {"association": "calling_ae", "value": "CT1"}]},
         "actions": [{"action": "set", "tag": "InstitutionName", "value": "{PatientID|lower}-SITE"},
                     {"action": "delete", "tag": "StationName"}],
         "destinations": ["archive", "pacs"]},
        {"id": "never-reached", "destinations": ["archive"]},
    ]}],
}


def run(tmp_path, capsys, *args):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    assert main(["rules", "test", get_testdata_file("CT_small.dcm"), "--config", str(cfg), *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_reports_rules_reasons_diff_and_destinations(tmp_path, capsys):
    out = run(tmp_path, capsys, "--calling-ae", "CT1")
    assert out["outcome"] == "route" and out["matched"] == ["site/ct-from-scanner"]
    assert out["destinations"] == ["archive", "pacs"]
    rules = {r["rule"]: r for r in out["rules"]}
    assert rules["mr-only"]["matched"] is False and rules["mr-only"]["condition"]["why"] == "value(s) ['CT']"
    assert [c["result"] for c in rules["ct-from-scanner"]["condition"]["children"]] == [True, True]
    assert rules["never-reached"]["reason"] == "not evaluated: FIRST_MATCH already matched"
    diff = {d["name"]: d for d in out["diff"]}
    assert diff["InstitutionName"]["change"] == "changed"
    assert diff["InstitutionName"]["after"] == "1ct1-SITE"  # CT_small's PatientID 1CT1, lowered
    assert diff["StationName"]["change"] == "removed"
    assert set(diff) == {"InstitutionName", "StationName"}


def test_dry_run_other_calling_ae_falls_to_the_catch_all(tmp_path, capsys):
    out = run(tmp_path, capsys, "--calling-ae", "OTHER")
    assert out["matched"] == ["site/never-reached"] and out["diff"] == []
    why = {r["rule"]: r for r in out["rules"]}["ct-from-scanner"]["condition"]["children"][1]["why"]
    assert why == "calling_ae is 'OTHER'"


def test_dry_run_reports_a_conversion_to_utf8(tmp_path, capsys):
    """A name with umlauts on a file without Specific Character Set: the dry run shows
    the (0008,0005) the morph adds and why."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "site", "rules": [{"id": "all", "destinations": ["archive"], "actions": [
            {"action": "set", "tag": "PatientName", "value": "Müller^Jürgen"}]}]}]}))
    assert main(["rules", "test", get_testdata_file("MR_small.dcm"), "--config", str(cfg)]) == 0
    out = json.loads(capsys.readouterr().out)
    diff = {d["name"]: d for d in out["diff"]}
    assert diff["SpecificCharacterSet"]["change"] == "added" and diff["SpecificCharacterSet"]["after"] == "ISO_IR 192"
    assert diff["PatientName"]["after"] == "Müller^Jürgen"
    assert out["character_set"]["before"] is None and out["character_set"]["after"] == "ISO_IR 192"
