"""``axiom-flow config export|import`` on the embedded store, and ``validate`` naming
every problem at once."""

from __future__ import annotations

import yaml

from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
from shared.cli import main
from shared.config import parse_config
from shared.config.store import ConfigStore, replace_config
from tests.unit.test_config_api import CONFIG


def store(data_dir) -> ConfigStore:
    return ConfigStore(SQLiteDocumentStore(SQLiteDatabase(data_dir / "state.db")))


def test_export_then_import_with_dry_run_diff(tmp_path, capsys):
    replace_config(store(tmp_path).docs, parse_config(CONFIG))
    assert main(["config", "export", "--data-dir", str(tmp_path)]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert parse_config(data) == parse_config(CONFIG)
    data["destinations"][0]["path"] = "elsewhere"
    data["destinations"].append({"id": "more", "type": "filesystem", "path": "more"})
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))

    assert main(["config", "import", str(changed), "--dry-run", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '~ destinations/archive\n    path: "out" -> "elsewhere"\n' in out and "+ destinations/more" in out
    assert "1 added, 1 changed, 0 removed" in out
    assert store(tmp_path).config().destination("archive").path == "out"  # a dry run writes nothing

    assert main(["config", "import", str(changed), "--data-dir", str(tmp_path)]) == 0
    assert "imported" in capsys.readouterr().out
    assert store(tmp_path).config().destination("archive").path == "elsewhere"
    assert main(["config", "import", str(changed), "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no changes\n"


def test_import_and_validate_name_every_problem_and_write_nothing(tmp_path, capsys):
    replace_config(store(tmp_path).docs, parse_config(CONFIG))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "listeners": [{"id": "a", "port": 104}, {"id": "b", "port": 104}],
        "destinations": [{"id": "d", "type": "filesystem", "path": "x", "bogus": 1}],
        "rulesets": [{"id": "rs", "rules": [{"id": "r", "destinations": ["gone"]}]}]}))
    for argv in (["config", "import", str(bad), "--data-dir", str(tmp_path)], ["validate", str(bad)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "destinations.0.filesystem.bogus" in err and "listeners[b].port" in err, err
        assert "rulesets[rs].rules[r].destinations[0]: unknown destination 'gone'" in err
    assert store(tmp_path).config() == parse_config(CONFIG)
    empty = tmp_path / "empty.yaml"
    empty.write_text("listeners: [{id: a}]\n")
    assert main(["validate", str(empty)]) == 2
    assert "no destination is configured" in capsys.readouterr().err
