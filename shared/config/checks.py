"""The checks that span documents, over the config as plain data: unique ids (also of
rules within a ruleset), one listener per address and port, and every reference (a
destination, schedule or crosswalk table) naming something configured. They return
every problem, each with its location, so one answer lists them all; they run on raw
data too, so they are reported beside the field errors of other documents
(:func:`shared.config.loading.parse_config`).

Also :func:`readable`, a location as an operator reads it (``rulesets[ct].rules[r1]``
rather than ``rulesets.0.rules.3``), and :func:`unusable`, what a runtime needs."""

from __future__ import annotations

from typing import Any, Iterator

from shared.config import aliases

LIST_COLLECTIONS = ("listeners", "destinations", "rulesets", "schedules", "crosswalks", "sources", "crosswalk_sources",
                    "spanners")
Loc = tuple[Any, ...]
_ANY_ADDRESS = {"", "0.0.0.0", "::"}


def _items(data: dict, key: str) -> Iterator[tuple[int, dict]]:
    value = data.get(key) if isinstance(data, dict) else None
    for n, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict):
            yield n, item


def _duplicates(items, where: Loc) -> list[tuple[Loc, str]]:
    seen: set = set()
    out = []
    for n, item in items:
        key = item.get("id")
        if not isinstance(key, str):  # a missing or non-string id is a field error
            continue
        if key in seen:
            out.append(((*where, n, "id"), f"duplicate id {key!r}"))
        seen.add(key)
    return out


def _unknown(name: Any, known: set[str]) -> bool:
    """``name`` refers to nothing in ``known``; a list, mapping or number there is a field
    error of its own (pydantic's), not a reference."""
    return (name is None or isinstance(name, str)) and name not in known


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def reference_problems(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Every cross-document problem of ``data`` (a config as plain data, any shape)."""
    if not isinstance(data, dict):
        return []
    problems = []
    for kind in LIST_COLLECTIONS:
        problems += _duplicates(_items(data, kind), (kind,))
    bound: list[tuple[str, int]] = []
    for n, listener in _items(data, "listeners"):
        host, port = str(listener.get("host", "0.0.0.0")), listener.get("port", 11112)
        if port != 0 and any(p == port and (h == host or {h, host} & _ANY_ADDRESS) for h, p in bound):
            problems.append((("listeners", n, "port"), f"port {port} is already taken by another listener"))
        bound.append((host, port))
    ids = {kind: {item["id"] for _, item in _items(data, kind) if isinstance(item.get("id"), str)}
           for kind in LIST_COLLECTIONS}
    key_counts = {}  # crosswalk table id -> values in a key
    for n, table in _items(data, "crosswalks"):
        if table.get("source") is not None and _unknown(table.get("source"), ids["crosswalk_sources"]):
            problems.append((("crosswalks", n, "source"), f"unknown crosswalk source {table.get('source')!r}"))
        if isinstance(table.get("id"), str):
            key_counts[table["id"]] = len(_list(table.get("keys"))) if table.get("source") is not None else 1
    for n, listener in _items(data, "listeners"):
        if listener.get("spanner") is not None and _unknown(listener.get("spanner"), ids["spanners"]):
            problems.append((("listeners", n, "spanner"), f"unknown spanner {listener.get('spanner')!r}"))
    for i, spanner in _items(data, "spanners"):
        for n, member in enumerate(_list(spanner.get("sources"))):
            if isinstance(member, dict) and _unknown(member.get("source"), ids["sources"]):
                problems.append((("spanners", i, "sources", n, "source"), f"unknown source {member.get('source')!r}"))
    for i, ruleset in _items(data, "rulesets"):
        ruleset = aliases.ruleset(ruleset)
        problems += _duplicates(_items(ruleset, "rules"), ("rulesets", i, "rules"))
        for j, rule in _items(ruleset, "rules"):
            at = ("rulesets", i, "rules", j)
            schedule = rule.get("schedule")
            if schedule is not None and _unknown(schedule, ids["schedules"]):
                problems.append(((*at, "schedule"), f"unknown schedule {schedule!r}"))
            for n, action in _items(rule, "actions"):
                if action.get("action") != "crosswalk":
                    continue
                if _unknown(action.get("table"), ids["crosswalks"]):
                    problems.append(((*at, "actions", n, "table"), f"unknown crosswalk table {action.get('table')!r}"))
                elif isinstance(action.get("table"), str) and action["table"] in key_counts:
                    given = len(_list(action.get("key_tags"))) or 1
                    wanted = key_counts[action["table"]]
                    if given != wanted:
                        problems.append(((*at, "actions", n, "key_tags"),
                                         f"crosswalk table {action['table']!r} takes {wanted} key value(s), "
                                         f"the action gives {given}"))
            for n, dest in enumerate(_list(rule.get("destinations"))):
                if _unknown(dest, ids["destinations"]):
                    problems.append(((*at, "destinations", n), f"unknown destination {dest!r}"))
    route = data.get("default_route")
    for n, dest in enumerate(_list(route.get("destinations")) if isinstance(route, dict) else []):
        if _unknown(dest, ids["destinations"]):
            problems.append((("default_route", "destinations", n), f"unknown destination {dest!r}"))
    return problems


def unusable(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """What makes a whole config (a file, an import) unusable by a runtime although each
    document is valid: nothing to deliver to, or no way to receive an instance."""
    problems = []
    if not list(_items(data, "destinations")):
        problems.append((("destinations",), "no destination is configured: nothing could ever be delivered"))
    stow = data.get("stow") if isinstance(data.get("stow"), dict) else {}
    sources = [s for _, s in _items(data, "sources") if s.get("enabled", True)]
    if not list(_items(data, "listeners")) and not sources and stow.get("enabled", True) is False:
        problems.append((("listeners",), "nothing receives instances: configure a listener or a source, "
                                         "or enable stow"))
    return problems


def readable(loc: Loc, data: Any) -> str:
    """``loc`` (a pydantic error location) as a path: a list item is named by its id
    when it has one; the tags pydantic adds for a union member are left out."""
    out, current = "", data
    for k, part in enumerate(loc):
        last = k == len(loc) - 1
        if isinstance(part, int):
            item = current[part] if isinstance(current, list) and 0 <= part < len(current) else None
            key = item.get("id", item.get("name")) if isinstance(item, dict) else None
            out += f"[{key}]" if isinstance(key, str) else f"[{part}]"
            current = item
            continue
        if isinstance(current, dict) and not last:
            value = current.get(part)
            if part not in current and part in {v for v in current.values() if isinstance(v, str)}:
                continue  # a discriminated union's tag (a destination's type, an action's name)
            if part in current and (not isinstance(value, (dict, list)) or loc[k + 1] == part):
                continue  # a condition's kind ("tag", "all"), the key that picked its model
        out += f".{part}" if out else str(part)
        current = current.get(part) if isinstance(current, dict) else None
    return out
