"""``axiom-flow crosswalk sync``: copy database crosswalk maps with ``sync`` into the
document store now (:mod:`shared.crosswalk_sync`), with a progress bar on stderr and
each map's report on stdout. The maps come from ``--config FILE`` or the stored
config; the copy goes to the embedded runtime's data dir or, with ``--gcp``, to
Firestore."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

from shared import cli_progress
from shared.cli_users import CliError


def _bar(map_id: str) -> Callable[[int, "int | None"], None]:
    return lambda done, total: cli_progress.draw(map_id, done, total, " rows")


def _stores(args):
    """The document store and secrets of the deployment named by --data-dir or --gcp."""
    if args.gcp:
        from shared.adapters.secret_manager import SecretManagerSecrets
        from shared.runtime.gcp import document_store

        return document_store(), SecretManagerSecrets()
    from shared.adapters.secrets import LocalSecrets
    from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore

    return SQLiteDocumentStore(SQLiteDatabase(Path(args.data_dir) / "state.db")), LocalSecrets()


def _sync(args) -> int:
    from shared.adapters.crosswalk_databases import DatabaseCrosswalk
    from shared.cli import _load_config
    from shared.config.store import ConfigStore
    from shared.crosswalk_sync import sync_map

    docs, secrets = _stores(args)
    config = _load_config(args.config) if args.config else ConfigStore(docs).config()
    maps = [spec for spec in config.crosswalks if spec.synced]
    if args.map:
        spec = next((t for t in config.crosswalks if t.id == args.map), None)
        if spec is None:
            raise CliError(f"no crosswalk map {args.map!r} in the config", status=2)
        if not spec.synced:
            raise CliError(f"crosswalk map {args.map!r} has no `sync` (or it is not enabled)", status=2)
        maps = [spec]
    if not maps:
        print("no crosswalk map has `sync`: nothing to do")
        return 0
    crosswalk = DatabaseCrosswalk([], config.crosswalk_sources, secrets)
    failed = 0
    try:
        for spec in maps:
            report = sync_map(docs, crosswalk, spec, progress=_bar(spec.id))
            cli_progress.finish()
            print(report.line())
            failed += report.error is not None
    finally:
        crosswalk.close()
    return 1 if failed else 0


def add_commands(sub, command: Callable[..., argparse.ArgumentParser]) -> None:
    from shared.cli import _readable_file  # noqa: PLC0415 (shared.cli imports this module)

    crosswalk = command(sub, "crosswalk", "work with crosswalk maps").add_subparsers(
        dest="crosswalk_command", required=True, metavar="COMMAND")
    sync = command(crosswalk, "sync", "copy the database maps with `sync` into the document store now; prints "
                                      "rows added, changed and removed")
    sync.add_argument("--map", metavar="ID", help="only this map (default: every map with `sync`)")
    sync.add_argument("--config", type=_readable_file, metavar="FILE",
                      help="the maps and sources of this YAML config file (default: the stored config)")
    group = sync.add_mutually_exclusive_group()
    group.add_argument("--data-dir", metavar="DIR", default=os.environ.get("AXIOM_DATA_DIR") or "data",
                       help="the embedded runtime's data dir, whose document store gets the copy ($AXIOM_DATA_DIR)")
    group.add_argument("--gcp", action="store_true",
                       help="Firestore of the GCP deployment ($GOOGLE_CLOUD_PROJECT, $AXIOM_FIRESTORE_DATABASE, "
                            "$AXIOM_COLLECTION_PREFIX)")
    sync.set_defaults(func=_sync)
