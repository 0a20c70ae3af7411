"""The rule engine: decide, for one received instance, which rules match, which
actions apply and where the result goes. Pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from shared.config import (
    AllOf,
    AnyOf,
    AppConfig,
    AssociationCondition,
    NotOf,
    TagCondition,
)
from shared.dicom.tags import parse_tag
from shared.messages import IngestMetadata, RuleRef


@dataclass
class Decision:
    matched: list[RuleRef] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    destination_ids: list[str] = field(default_factory=list)
    default_route: bool = False


def _values(ds: Dataset, address: str) -> list[str] | None:
    elem = ds.get(parse_tag(address))
    if elem is None:
        return None
    value = elem.value
    if value is None or value == "":
        return []
    items = value if isinstance(value, (list, MultiValue)) else [value]
    return [str(v).strip() for v in items]


def evaluate(cond, ds: Dataset, ingest: IngestMetadata) -> bool:
    if isinstance(cond, AllOf):
        return all(evaluate(c, ds, ingest) for c in cond.all)
    if isinstance(cond, AnyOf):
        return any(evaluate(c, ds, ingest) for c in cond.any)
    if isinstance(cond, NotOf):
        return not evaluate(cond.not_, ds, ingest)
    if isinstance(cond, TagCondition):
        values = _values(ds, cond.tag)
        if cond.op == "exists":
            return values is not None
        if cond.op == "not_exists":
            return values is None
        hit = values is not None and cond.value.strip() in values
        return hit if cond.op == "eq" else not hit
    if isinstance(cond, AssociationCondition):
        hit = str(getattr(ingest, cond.association)).strip() == cond.value.strip()
        return hit if cond.op == "eq" else not hit
    raise TypeError(f"unknown condition {cond!r}")


def decide(config: AppConfig, ds: Dataset, ingest: IngestMetadata) -> Decision:
    decision = Decision()
    for ruleset in config.active_rulesets():
        for rule in ruleset.rules:
            if not rule.enabled or (rule.when is not None and not evaluate(rule.when, ds, ingest)):
                continue
            decision.matched.append(RuleRef(ruleset_id=ruleset.id, rule_id=rule.id))
            decision.actions.extend(a.model_dump(mode="json") for a in rule.actions)
            for dest in rule.destinations:
                if dest not in decision.destination_ids:
                    decision.destination_ids.append(dest)
            if ruleset.mode == "FIRST_MATCH":
                break
    if not decision.matched:
        decision.default_route = True
        decision.destination_ids = list(config.default_route.destinations)
    return decision
