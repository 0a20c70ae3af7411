"""The rule engine: decide, for one received instance, which rules match, which actions
apply and where the result goes. Pure functions, no I/O; the same code serves the
pipeline and the dry-run (``trace=True`` explains every condition).

Cost: each ruleset keeps an index of its rules by one cheap equality each rule requires
(a Modality, an AE title, a source), so rules that cannot match are never evaluated."""

from __future__ import annotations

import ipaddress
import operator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from shared.config import (
    AllOf,
    AnyOf,
    AppConfig,
    AssociationCondition,
    NotOf,
    Rule,
    Ruleset,
    Settings,
    TagCondition,
)
from shared.dicom import pixel_data
from shared.dicom.tags import locate, parse_path
from shared.dicom.values import NUMERIC_VRS, TEMPORAL_VRS, comparison_key
from shared.memo import PerObject
from shared.messages import IngestMetadata, RuleRef
from shared.regex import compile_regex
from shared.schedules import is_active

_ASSOCIATION_FIELDS = {"calling_ae": "calling_ae", "called_ae": "called_ae", "source_ip": "peer_ip",
                       "source_type": "source_type", "source_id": "source_id"}


# --- results --------------------------------------------------------------------------


@dataclass
class ConditionTrace:
    condition: str
    result: bool
    why: str = ""
    children: list["ConditionTrace"] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"condition": self.condition, "result": self.result}
        if self.why:
            out["why"] = self.why
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out


@dataclass
class RuleTrace:
    ruleset_id: str
    rule_id: str
    matched: bool
    reason: str
    condition: ConditionTrace | None = None

    def to_dict(self) -> dict:
        out = {"ruleset": self.ruleset_id, "rule": self.rule_id, "matched": self.matched, "reason": self.reason}
        if self.condition:
            out["condition"] = self.condition.to_dict()
        return out


@dataclass
class Decision:
    matched: list[RuleRef] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    destination_ids: list[str] = field(default_factory=list)
    default_route: bool = False
    log_original_attributes: bool = False
    trace: list[RuleTrace] = field(default_factory=list)


# --- element values ---------------------------------------------------------------------


def element_values(ds: Dataset, address: str) -> tuple[bool, str | None, list[Any]]:
    """(exists, VR, values) for every element ``address`` names; multi-valued elements
    contribute each value."""
    places = locate(ds, parse_path(address))
    if not places:
        return False, None, []
    vr, values = None, []
    for parent, tag in places:
        elem = parent[tag]
        vr = vr or elem.VR
        value = elem.value
        if value is None or value == "" or elem.VR == "SQ":
            continue
        if isinstance(value, (bytes, bytearray)):
            continue  # binary values are not compared
        values.extend(value if isinstance(value, (list, MultiValue)) else [value])
    return True, vr, values


def _text(value: Any, case_insensitive: bool) -> str:
    text = str(value).strip()
    return text.casefold() if case_insensitive else text


def _equal(vr: str | None, actual: Any, wanted: Any, ci: bool) -> bool:
    if vr in NUMERIC_VRS or vr in TEMPORAL_VRS:
        a, w = comparison_key(vr, actual), comparison_key(vr, wanted)
        if a is not None and w is not None:
            return a == w
    return _text(actual, ci) == _text(wanted, ci)


_ORDER = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def _compare(op: str, vr: str | None, actual: Any, wanted: Any) -> bool:
    a, w = comparison_key(vr, actual), comparison_key(vr, wanted)
    if a is None or w is None:
        return False
    try:
        return _ORDER[op](a, w)
    except TypeError:  # e.g. a number against text in a private element
        return False


_NEGATED = {"ne": "eq", "not_contains": "contains", "not_in": "in", "not_exists": "exists"}


def _value_test(cond: TagCondition, vr: str | None, value: Any) -> bool:
    op, ci, wanted = _NEGATED.get(cond.op, cond.op), cond.case_insensitive, cond.value
    if op == "eq":
        return _equal(vr, value, wanted, ci)
    if op == "in":
        return any(_equal(vr, value, w, ci) for w in wanted)
    if op in ("gt", "ge", "lt", "le"):
        return _compare(op, vr, value, wanted)
    if op == "contains":
        return _text(wanted, ci) in _text(value, ci)
    if op == "startswith":
        return _text(value, ci).startswith(_text(wanted, ci))
    if op == "endswith":
        return _text(value, ci).endswith(_text(wanted, ci))
    if op == "regex":
        return compile_regex(str(wanted), ci).search(str(value).strip()) is not None
    raise ValueError(f"unknown operator {cond.op}")


def _describe(cond) -> str:
    if isinstance(cond, TagCondition):
        value = "" if cond.value is None else f" {cond.value!r}"
        flags = (" (case-insensitive)" if cond.case_insensitive else "") + (" (all values)" if cond.match == "all" else "")
        return f"{cond.tag} {cond.op}{value}{flags}"
    if isinstance(cond, AssociationCondition):
        return f"{cond.association} {cond.op} {cond.value!r}"
    return type(cond).__name__


# --- evaluation ------------------------------------------------------------------------


class Evaluator:
    """Evaluates conditions against one dataset and its arrival; with ``trace`` it
    records each condition's result and why (for the dry-run)."""

    def __init__(self, ds: Dataset, ingest: IngestMetadata, *, trace: bool = False):
        self.ds = ds
        self.ingest = ingest
        self.trace = trace
        self._values: dict[str, tuple[bool, str | None, list[Any]]] = {}

    def values(self, address: str):
        cached = self._values.get(address)
        if cached is None:
            cached = self._values[address] = element_values(self.ds, address)
        return cached

    def evaluate(self, cond) -> tuple[bool, ConditionTrace | None]:
        if isinstance(cond, (AllOf, AnyOf)):
            items = cond.all if isinstance(cond, AllOf) else cond.any
            want_all = isinstance(cond, AllOf)
            children, result = [], want_all
            for child in items:
                ok, t = self.evaluate(child)
                if t:
                    children.append(t)
                if ok != want_all:
                    result = ok
                    if not self.trace:
                        break
            return result, (ConditionTrace("all" if want_all else "any", result, children=children) if self.trace else None)
        if isinstance(cond, NotOf):
            ok, t = self.evaluate(cond.not_)
            return (not ok), (ConditionTrace("not", not ok, children=[t]) if self.trace else None)
        if isinstance(cond, TagCondition):
            return self._tag(cond)
        if isinstance(cond, AssociationCondition):
            return self._association(cond)
        raise TypeError(f"unknown condition {cond!r}")

    def _tag(self, cond: TagCondition):
        exists, vr, values = self.values(cond.tag)
        if cond.op in ("exists", "not_exists"):
            result = exists if cond.op == "exists" else not exists
            why = "present" if exists else "absent"
        elif not values:
            result = cond.op in _NEGATED
            why = "absent" if not exists else "present but empty"
        else:
            tests = [_value_test(cond, vr, v) for v in values]
            hit = all(tests) if cond.match == "all" else any(tests)
            result = (not hit) if cond.op in _NEGATED else hit
            why = f"value(s) {[str(v) for v in values][:8]!r}" if self.trace else ""
        return result, (ConditionTrace(_describe(cond), result, why) if self.trace else None)

    def _association(self, cond: AssociationCondition):
        actual = str(getattr(self.ingest, _ASSOCIATION_FIELDS[cond.association]) or "").strip()
        wanted = cond.value if isinstance(cond.value, list) else [cond.value]
        op = _NEGATED.get(cond.op, cond.op)
        ci = cond.case_insensitive
        if cond.association == "source_ip":
            try:
                ip = ipaddress.ip_address(actual)
                hit = any(ip in ipaddress.ip_network(n, strict=False) for n in wanted)
            except ValueError:
                hit = False
        elif op in ("eq", "in"):
            hit = any(_text(actual, ci) == _text(w, ci) for w in wanted)
        elif op == "startswith":
            hit = _text(actual, ci).startswith(_text(wanted[0], ci))
        else:  # regex
            hit = compile_regex(wanted[0], ci).search(actual) is not None
        result = (not hit) if cond.op in _NEGATED else hit
        return result, (ConditionTrace(_describe(cond), result, f"{cond.association} is {actual!r}") if self.trace else None)


# --- the index -------------------------------------------------------------------------


def _discriminator(cond) -> tuple[str, str, frozenset[str]] | None:
    """One equality the condition requires, usable as an index key:
    ("tag", address, values) or ("association", field, values)."""
    if isinstance(cond, AllOf):
        for child in cond.all:
            found = _discriminator(child)
            if found:
                return found
        return None
    if isinstance(cond, TagCondition) and cond.op in ("eq", "in") and not cond.case_insensitive and cond.match == "any":
        path = parse_path(cond.tag)
        if len(path.steps) == 1 and path.leaf.tag is not None:
            vr = path.dictionary_vr()
            if vr not in NUMERIC_VRS and vr not in TEMPORAL_VRS and vr not in (None, "SQ", "PN"):
                values = cond.value if isinstance(cond.value, list) else [cond.value]
                return ("tag", cond.tag, frozenset(str(v).strip() for v in values))
    if (isinstance(cond, AssociationCondition) and cond.op in ("eq", "in") and not cond.case_insensitive
            and cond.association != "source_ip"):
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        return ("association", cond.association, frozenset(v.strip() for v in values))
    return None


@dataclass
class RulesetIndex:
    always: list[int]  # rules without a discriminator: always evaluated
    by_key: dict[tuple[str, str], dict[str, list[int]]]

    @classmethod
    def build(cls, ruleset: Ruleset) -> "RulesetIndex":
        always, by_key = [], {}
        for n, rule in enumerate(ruleset.rules):
            if not rule.enabled:
                continue
            disc = _discriminator(rule.when) if rule.when is not None else None
            if disc is None:
                always.append(n)
                continue
            kind, key, values = disc
            slot = by_key.setdefault((kind, key), {})
            for value in values:
                slot.setdefault(value, []).append(n)
        return cls(always, by_key)

    def candidates(self, ev: Evaluator) -> list[int]:
        found = set(self.always)
        for (kind, key), slot in self.by_key.items():
            if kind == "tag":
                _, _, values = ev.values(key)
                actual = {str(v).strip() for v in values}
            else:
                actual = {str(getattr(ev.ingest, _ASSOCIATION_FIELDS[key]) or "").strip()}
            for value in actual:
                found.update(slot.get(value, ()))
        return sorted(found)


ruleset_index: PerObject[Ruleset, RulesetIndex] = PerObject(RulesetIndex.build, max_entries=256)


# --- deciding --------------------------------------------------------------------------


def in_scope(ruleset: Ruleset, ingest: IngestMetadata) -> bool:
    return not ruleset.sources or any(
        s.type == ingest.source_type and (s.id is None or s.id == ingest.source_id) for s in ruleset.sources
    )


def decide(config: AppConfig, ds: Dataset, ingest: IngestMetadata, *, at: datetime | None = None,
           trace: bool = False) -> Decision:
    """Run the enabled rulesets in priority order. Conditions see the dataset as
    received; the actions of matched rules are collected in order. Schedules are
    evaluated at ``at`` (default: when the instance was received, so a re-run decides
    the same way)."""
    at = at or ingest.received_at
    schedules = {s.id: s for s in config.schedules}
    decision = Decision(log_original_attributes=False)
    ev = Evaluator(ds, ingest, trace=trace)
    log_oa = config.settings.log_original_attributes
    for ruleset in config.active_rulesets():
        if not in_scope(ruleset, ingest):
            if trace:
                decision.trace.append(RuleTrace(ruleset.id, "*", False, "ruleset not in scope for this source"))
            continue
        candidates = set(ruleset_index(ruleset).candidates(ev)) if not trace else None
        first_done = False
        for n, rule in enumerate(ruleset.rules):
            if candidates is not None and n not in candidates:
                continue
            if first_done:
                reason = "disabled" if not rule.enabled else "not evaluated: FIRST_MATCH already matched"
                decision.trace.append(RuleTrace(ruleset.id, rule.id, False, reason))
                continue
            matched, reason, ctrace = _rule_matches(rule, ev, schedules, at)
            if trace:
                decision.trace.append(RuleTrace(ruleset.id, rule.id, matched, reason, ctrace))
            if not matched:
                continue
            decision.matched.append(RuleRef(ruleset_id=ruleset.id, rule_id=rule.id))
            decision.actions.extend(a.model_dump(mode="json", by_alias=True, exclude_none=True) for a in rule.actions)
            for dest in rule.destinations:
                if dest not in decision.destination_ids:
                    decision.destination_ids.append(dest)
            if rule.actions and (ruleset.log_original_attributes if ruleset.log_original_attributes is not None else log_oa):
                decision.log_original_attributes = True
            if ruleset.mode == "FIRST_MATCH":
                if not trace:
                    break
                first_done = True
    if not decision.matched:
        decision.default_route = True
        decision.destination_ids = list(config.default_route.destinations)
    return decision


def _rule_matches(rule: Rule, ev: Evaluator, schedules, at: datetime) -> tuple[bool, str, ConditionTrace | None]:
    if not rule.enabled:
        return False, "disabled", None
    if rule.schedule is not None and not is_active(schedules[rule.schedule], at):
        return False, f"outside schedule {rule.schedule}", None
    if rule.when is None:
        return True, "no condition: matches every instance", None
    ok, ctrace = ev.evaluate(rule.when)
    return ok, "condition true" if ok else "condition false", ctrace


# --- validation before matching -----------------------------------------------------------

_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def validate_instance(ds: Dataset, settings: Settings) -> list[str]:
    """Problems that stop an instance from being routed: missing required attributes
    (settings.required_attributes), malformed UIDs (PS3.5 section 9.1) or UIDs not
    encoded as UI, file meta elements (group 0002) in the data set, where PS3.10
    section 7.1 does not allow them, and native Pixel Data shorter than its image
    (:mod:`shared.dicom.pixel_data`). None of them names a value.

    Reading a value may raise :class:`shared.dicom.io.UndecodableValue` (an
    :class:`~shared.errors.Unprocessable`) for one that cannot be decoded."""
    problems = []
    meta_in_dataset = [tag for tag in ds.keys() if tag.group == 0x0002]
    if meta_in_dataset:
        problems.append(f"the data set holds file meta elements ({', '.join(str(t) for t in meta_in_dataset[:3])}"
                        f"{', ...' if len(meta_in_dataset) > 3 else ''}), which belong in the file meta "
                        "information only (PS3.10 7.1)")
    for address in settings.required_attributes:
        exists, _, values = element_values(ds, address)
        if not exists or not values:
            problems.append(f"required attribute {address} is {'empty' if exists else 'missing'}")
    for keyword in _UID_KEYWORDS:
        if keyword not in ds:
            continue
        elem = ds[keyword]
        if elem.VR != "UI":
            problems.append(f"{keyword} is encoded with the VR {elem.VR}, not UI (PS3.6)")
        elif isinstance(elem.value, (list, MultiValue)):
            problems.append(f"{keyword} has {len(elem.value)} values, not one (PS3.6)")
        elif elem.value and not UID(str(elem.value)).is_valid:
            problems.append(f"{keyword} is not a valid UID")
    ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if ts and not UID(str(ts)).is_valid:
        problems.append("TransferSyntaxUID is not a valid UID")
    truncated = pixel_data.shortfall(ds)
    if truncated:
        problems.append(truncated)
    return problems
