"""The seeds' spelling of rulesets, accepted as an alias of the canonical form and
converted on input, before validation (so errors name canonical fields and stored
documents are canonical):

=====================================  ================================================
seeds                                  canonical
=====================================  ================================================
ruleset / rule ``name``                ``id``
``execution_mode``                     ``mode``
``conditions: [c1, c2]``               ``when: {all: [c1, c2]}`` (one condition: itself)
``{type: tag_equals, tag, value}``     ``{tag, op: eq, value}`` (and the other ``tag_*``)
``tag: "(0x0008,0x0060)"``             ``tag: "(0008,0060)"``
action ``{type: set, ...}``            ``{action: set, ...}``
``storage_backends``                   ``destinations``
=====================================  ================================================

A field given in both spellings is left as it is: the alias is then an unknown field
and validation names it."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

# condition ``type`` -> the TagCondition operator
TAG_CONDITION_TYPES = {
    "tag_equals": "eq", "tag_not_equals": "ne", "tag_contains": "contains", "tag_not_contains": "not_contains",
    "tag_starts_with": "startswith", "tag_ends_with": "endswith", "tag_matches": "regex", "tag_regex": "regex",
    "tag_exists": "exists", "tag_not_exists": "not_exists", "tag_in": "in", "tag_not_in": "not_in",
    "tag_greater_than": "gt", "tag_less_than": "lt",
}
_HEX_TAG = re.compile(r"^\(\s*0x([0-9A-Fa-f]{4})\s*,\s*0x([0-9A-Fa-f]{4})\s*\)$")


def _rename(data: dict[str, Any], alias: str, canonical: str) -> None:
    if alias in data and canonical not in data:
        data[canonical] = data.pop(alias)


def _on_a_copy(convert: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Any], Any]:
    """``convert`` applied to a copy of a dict; anything else passes unchanged (and
    validation says what is wrong with it)."""

    @functools.wraps(convert)
    def alias(data: Any) -> Any:
        return convert(dict(data)) if isinstance(data, dict) else data

    return alias


def tag(value: Any) -> Any:
    """``(0x0008,0x0060)`` -> ``(0008,0060)``; anything else unchanged."""
    match = _HEX_TAG.match(value) if isinstance(value, str) else None
    return f"({match.group(1)},{match.group(2)})" if match else value


def condition(data: Any) -> Any:
    if not isinstance(data, dict) or data.get("type") not in TAG_CONDITION_TYPES:
        return data
    data = dict(data)
    data["op"] = TAG_CONDITION_TYPES[data.pop("type")]
    if "tag" in data:
        data["tag"] = tag(data["tag"])
    return data


@_on_a_copy
def action(data: dict[str, Any]) -> dict[str, Any]:
    _rename(data, "type", "action")
    for field in ("tag", "to", "from"):
        if field in data:
            data[field] = tag(data[field])
    return data


@_on_a_copy
def rule(data: dict[str, Any]) -> dict[str, Any]:
    _rename(data, "name", "id")
    _rename(data, "storage_backends", "destinations")
    if "conditions" in data and "when" not in data and isinstance(data["conditions"], list):
        conditions = [condition(c) for c in data.pop("conditions")]
        data["when"] = None if not conditions else conditions[0] if len(conditions) == 1 else {"all": conditions}
    if isinstance(data.get("actions"), list):
        data["actions"] = [action(a) for a in data["actions"]]
    return data


@_on_a_copy
def ruleset(data: dict[str, Any]) -> dict[str, Any]:
    _rename(data, "name", "id")
    _rename(data, "execution_mode", "mode")
    if isinstance(data.get("rules"), list):
        data["rules"] = [rule(r) for r in data["rules"]]
    return data
