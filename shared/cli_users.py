"""``axiom-flow users create-admin|list`` and ``axiom-flow keys revoke``: users and API
keys from the command line, in the embedded store of a data dir (the ``state.db``
``serve`` uses) or, with ``--gcp``, in Firestore (GOOGLE_CLOUD_PROJECT or
``--project``; AXIOM_FIRESTORE_DATABASE, AXIOM_COLLECTION_PREFIX and
FIRESTORE_EMULATOR_HOST as the GCP runtime reads them). Changes are audited as made
on the command line."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from shared.api import audit, keys, users
from shared.api.permissions import Role


class CliError(Exception):
    """A refusal reported as one line on stderr, exit status ``status``."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class _AuditPorts:
    """What shared.api.audit.record needs of the ports: the document store."""

    def __init__(self, docs):
        self.docs = docs


def _store(args):
    if args.gcp:
        from shared.runtime.gcp import document_store

        env = dict(os.environ, **({"GOOGLE_CLOUD_PROJECT": args.project} if args.project else {}))
        if not env.get("GOOGLE_CLOUD_PROJECT"):
            raise CliError("--gcp needs a project: --project PROJECT, or set GOOGLE_CLOUD_PROJECT", 2)
        return document_store(env)
    from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteDocumentStore(SQLiteDatabase(data_dir / "state.db"))


def _create_admin(args) -> int:
    docs = _store(args)
    try:
        email = users.normal_email(args.email)
    except users.UserError:
        raise CliError(f"{args.email!r} is not an email address", 2) from None
    user = users.by_email(docs, email)
    if user is None:
        user = users.create(docs, email, Role.ADMIN)
        audit.record(_AuditPorts(docs), None, "users.create", f"users/{user.id}", after=user.to_doc())
        print(f"created admin user {user.id} ({user.email})")
    elif user.role is not Role.ADMIN or user.disabled:
        raise CliError(f"{email} is already a user, with role {user.role.value}"
                       f"{' (disabled)' if user.disabled else ''}: change them over the API (PATCH /api/v1/users/"
                       f"{user.id})")
    else:
        print(f"{user.email} is already an admin (user {user.id}): made a new API key")
    key, made = keys.create(docs, user.id, name=args.key_name, expires_at=keys.expiry(args.expires_in_days))
    audit.record(_AuditPorts(docs), None, "keys.create", f"keys/{made['prefix']}", after=made)
    print(f"API key {made['prefix']} (shown this once; send it as 'Authorization: Api-Key <key>'):")
    print(key)
    return 0


def _list_users(args) -> int:
    found = users.all_users(_store(args))
    if args.json:
        print(json.dumps([u.to_doc() for u in found], indent=2))
    else:
        for u in found:
            print(f"{u.id}  {u.role.value:<8}  {'disabled' if u.disabled else 'enabled ':<8}  {u.email}")
    return 0


def _revoke_key(args) -> int:
    docs = _store(args)
    try:
        before, after = keys.revoke(docs, args.prefix.strip())
    except KeyError:
        raise CliError(f"no API key has the prefix {args.prefix!r}") from None
    if before["revoked"]:
        print(f"API key {args.prefix} was already revoked")
    else:
        audit.record(_AuditPorts(docs), None, "keys.revoke", f"keys/{args.prefix}", before=before, after=after)
        print(f"revoked API key {args.prefix}")
    return 0


def _days(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days >= 1")
    return int(value)


def add_commands(sub, command) -> None:
    """The ``users`` and ``keys`` commands, under ``sub`` (shared.cli's subparsers);
    ``command(parent, name, help)`` makes one parser."""

    def where(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data-dir", metavar="DIR", default=os.environ.get("AXIOM_DATA_DIR") or "data",
                            help="the data dir of 'axiom-flow serve' ($AXIOM_DATA_DIR)")
        parser.add_argument("--gcp", action="store_true",
                            help="use Firestore instead (the project of --project or $GOOGLE_CLOUD_PROJECT)")
        parser.add_argument("--project", metavar="PROJECT", help="with --gcp: the Google Cloud project")

    user_cmds = command(sub, "users", "API users").add_subparsers(dest="users_command", required=True,
                                                                   metavar="COMMAND")
    create_admin = command(user_cmds, "create-admin", "create an admin user (or give an admin a new key) and print "
                                                      "a new API key as the last line")
    create_admin.add_argument("--email", required=True, help="the admin's email (their Google identity, if any)")
    create_admin.add_argument("--key-name", metavar="NAME", default="created on the command line",
                              help="a label for the key")
    create_admin.add_argument("--expires-in-days", type=_days, metavar="DAYS", help="the key stops working after this")
    where(create_admin)
    create_admin.set_defaults(func=_create_admin)

    list_users = command(user_cmds, "list", "list the users")
    list_users.add_argument("--json", action="store_true", help="as JSON")
    where(list_users)
    list_users.set_defaults(func=_list_users)

    key_cmds = command(sub, "keys", "API keys").add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    revoke = command(key_cmds, "revoke", "revoke an API key")
    revoke.add_argument("prefix", metavar="PREFIX", help="the key's prefix (the part before the '.')")
    where(revoke)
    revoke.set_defaults(func=_revoke_key)
