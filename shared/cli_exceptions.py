"""``axiom-flow exceptions list|show|retry|release|archive``: exception records over
the API (``/api/v1/exceptions``) of a running server, at ``--url`` with an API key
(``--api-key`` or ``AXIOM_API_KEY``). Tables by default, ``--json`` for scripts; bulk
actions (filters instead of ids) run as a job on the server, with a progress bar on
stderr. An HTTP error or an unreachable server ends in one line and exit 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import Callable

from shared import cli_progress

DEFAULT_URL = "http://127.0.0.1:8080"
API = "/api/v1"
ACTIONS = ("retry", "release", "archive")
POLL_S = 0.25


class ApiError(Exception):
    """What the server said no to, or why it could not be asked: one line."""


class Client:
    def __init__(self, url: str, api_key: str | None, *, timeout: float = 30.0, cacert: str | None = None):
        import httpx

        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else {}
        self.base = url.rstrip("/")
        # cacert: the CA of a server whose certificate the system does not trust (serve --tls-cert)
        self.http = httpx.Client(base_url=self.base + API, headers=headers, timeout=timeout,
                                 verify=cacert if cacert else True)

    def call(self, method: str, path: str, **params) -> dict:
        import httpx

        try:
            answer = self.http.request(method, path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.base}: {type(exc).__name__}"
                           f"{': ' + str(exc) if str(exc) else ''}") from None
        if answer.status_code >= 400:
            try:
                detail = answer.json().get("detail") or answer.json().get("error")
            except ValueError:
                detail = answer.text[:200]
            hint = " (give an API key: --api-key or AXIOM_API_KEY)" if answer.status_code == 401 else ""
            raise ApiError(f"HTTP {answer.status_code}: {detail}{hint}")
        return answer.json()


def _filters(args) -> dict:
    return {"status": args.status, "stage": args.stage, "destination_id": args.destination, "reason": args.reason,
            "since": args.since, "until": args.until, "archived": args.archived}


def _table(rows: list[dict], columns: list[tuple[str, str, int]]) -> str:
    """Rows as aligned text; a column's values cut at its width."""
    def cell(value, width):
        text = "" if value is None else str(value)
        return text if len(text) <= width else text[:width - 1] + "…"
    cells = [[cell(r.get(key), width) for key, _, width in columns] for r in rows]
    widths = [max([len(title)] + [len(c[i]) for c in cells]) for i, (_, title, _) in enumerate(columns)]
    lines = ["  ".join(title.ljust(w) for (_, title, _), w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


LIST_COLUMNS = [("id", "ID", 32), ("created_at", "CREATED", 25), ("status", "STATUS", 11), ("stage", "STAGE", 8),
                ("destination_id", "DESTINATION", 20), ("attempt_count", "TRIES", 5), ("reason", "REASON", 70)]


def _to_the_second(at: str | None) -> str | None:
    """An ISO 8601 time without its fraction of a second, so a table shows it whole."""
    try:
        return datetime.fromisoformat(at).replace(microsecond=0).isoformat()
    except (TypeError, ValueError):
        return at


def _list(client: Client, args) -> int:
    items, cursor = [], None
    while True:
        page = client.call("GET", "/exceptions", limit=args.limit, cursor=cursor, **_filters(args))
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor or not args.all_pages:
            break
    if args.json:
        print(json.dumps({"items": items, "next_cursor": cursor}, indent=2))
    else:
        print(_table([{**r, "created_at": _to_the_second(r.get("created_at"))} for r in items], LIST_COLUMNS))
        more = f"; more: --all-pages, or the API's next_cursor {cursor}" if cursor else ""
        print(f"{len(items)} record(s){more}", file=sys.stderr)
    return 0


def _show(client: Client, args) -> int:
    record = client.call("GET", f"/exceptions/{args.id}")
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    attempts = record.pop("attempts", [])
    for key, value in record.items():
        if value not in (None, "", [], {}):
            print(f"{key + ':':18} {value}")
    print(f"attempts ({record.get('attempt_count') or len(attempts)}, newest {len(attempts)} kept):")
    print(_table(attempts, [("at", "AT", 32), ("reason", "REASON", 100)]))
    return 0


def _progress(job: dict) -> None:
    # total None: not known until the job has read its items
    cli_progress.draw(job["action"], job["done"] + job["failed"], job["total"], f" ({job['failed']} failed)")


def _act(action: str) -> Callable[[Client, argparse.Namespace], int]:
    def run(client: Client, args) -> int:
        filters = {k: v for k, v in _filters(args).items() if v is not None}
        if args.ids:
            if filters or args.all:
                raise ApiError("give record ids or filters, not both")
            results = []
            for record_id in args.ids:
                try:
                    record = client.call("POST", f"/exceptions/{record_id}/{action}")
                    results.append({"id": record_id, "ok": True, "status": record["status"],
                                    "archived_at": record.get("archived_at")})
                except ApiError as exc:
                    results.append({"id": record_id, "ok": False, "error": str(exc)})
            if args.json:
                print(json.dumps(results, indent=2))
            else:
                for r in results:  # what went wrong on stderr, one line each
                    if r["ok"]:  # an archived record keeps its status: say what was done
                        print(f"{r['id']}: {'archived' if action == 'archive' else r['status']}")
                    else:
                        print(f"axiom-flow: {r['id']}: {r['error']}", file=sys.stderr)
            return 0 if all(r["ok"] for r in results) else 1
        if not filters and not args.all:
            raise ApiError(f"{action} what? give record ids, filters (--status, --destination, ...) or --all")
        job = client.call("POST", f"/exceptions/{action}", **({"all": "true"} if args.all else {}), **filters)
        while job["state"] != "finished":
            _progress(job)
            time.sleep(POLL_S)
            job = client.call("GET", f"/jobs/{job['id']}")
        _progress(job)
        cli_progress.finish()
        if args.json:
            print(json.dumps(job, indent=2))
        else:
            print(f"{action}: {job['done']} done, {job['failed']} failed of {job['total']}")
            for error in job["errors"]:
                print(f"  {error['item']}: {error['error']}")
        return 0 if job["failed"] == 0 else 1
    return run


def add_commands(sub, command: Callable[..., argparse.ArgumentParser]) -> None:
    """The ``exceptions`` command and its subcommands, on the CLI's parser."""
    group = command(sub, "exceptions", "list, show, retry, release or archive exception records of a running "
                                       "server (over its API)")
    subs = group.add_subparsers(dest="exceptions_command", required=True, metavar="COMMAND")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", default=os.environ.get("AXIOM_URL") or DEFAULT_URL,
                            help="the server's HTTP address ($AXIOM_URL)")
        parser.add_argument("--api-key", default=None, metavar="KEY",
                            help="API key (default: $AXIOM_API_KEY)")
        parser.add_argument("--cacert", default=os.environ.get("AXIOM_CA_CERT"), metavar="FILE",
                            help="CA certificate of an https:// server the system does not trust ($AXIOM_CA_CERT)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def filters(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--status", help="quarantined, held, failed, refused or retried")
        parser.add_argument("--stage", help="match, crosswalk, morph, route, stow, or a dead letter's topic")
        parser.add_argument("--destination", metavar="ID", help="destination id")
        parser.add_argument("--reason", metavar="TEXT", help="reason contains TEXT (any case)")
        parser.add_argument("--since", metavar="TIME", help="created at or after TIME (ISO 8601; naive: UTC)")
        parser.add_argument("--until", metavar="TIME", help="created before TIME (ISO 8601; naive: UTC)")
        parser.add_argument("--archived", choices=("false", "true", "any"), default=None,
                            help="archived records: left out (default), only them, or both")

    listing = command(subs, "list", "exception records, oldest first")
    filters(listing)
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="records per page (1-1000)")
    listing.add_argument("--all-pages", action="store_true", help="follow every page")
    common(listing)
    listing.set_defaults(func=_with_client(_list))

    show = command(subs, "show", "one record with its attempts")
    show.add_argument("id", help="record id")
    common(show)
    show.set_defaults(func=_with_client(_show))

    helps = {"retry": "send records' messages again", "release": "send held records' instances on now",
             "archive": "hide records from default lists (kept)"}
    for action in ACTIONS:
        parser = command(subs, action, f"{helps[action]}: the ids given, or every record the filters match "
                                       "(a job on the server, progress on stderr)")
        parser.add_argument("ids", nargs="*", metavar="ID", help="record ids")
        filters(parser)
        parser.add_argument("--all", action="store_true", help="every record (with no filter)")
        common(parser)
        parser.set_defaults(func=_with_client(_act(action)))


def _with_client(run: Callable[[Client, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def call(args) -> int:
        if args.cacert and not os.path.isfile(args.cacert):
            print(f"axiom-flow: --cacert {args.cacert}: no such file", file=sys.stderr)
            return 2
        client = Client(args.url, args.api_key or os.environ.get("AXIOM_API_KEY"), cacert=args.cacert)
        try:
            return run(client, args)
        except ApiError as exc:
            print(f"axiom-flow: {exc}", file=sys.stderr)
            return 1
    return call
