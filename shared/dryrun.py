"""Dry-run of the rules on one file: what would match, why, what would change, where
it would go. Backs ``axiom-flow rules test`` and (later) the config API's rule test."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from shared.config import AppConfig
from shared.dicom.charsets import declared, joined
from shared.dicom.io import read_instance
from shared.errors import Held, LookupFailed, RetryLater, Unprocessable
from shared.messages import IngestMetadata
from shared.rules import decide, validate_instance


def _show(elem) -> Any:
    if elem is None:
        return None
    if elem.VR == "SQ":
        return f"<sequence of {len(elem.value)} item(s)>"
    if isinstance(elem.value, (bytes, bytearray)):
        return f"<{len(elem.value)} bytes>"
    return "" if elem.value is None else str(elem.value)  # an empty element: present, no value


def diff_datasets(before: Dataset, after: Dataset, prefix: str = "") -> list[dict[str, Any]]:
    """Element-by-element differences, descending into sequences item by item."""
    out = []
    for tag in sorted(set(before.keys()) | set(after.keys())):
        if tag in before and tag in after:
            raw = before.get_item(tag, keep_deferred=True)
            if isinstance(raw, RawDataElement) and raw == after.get_item(tag, keep_deferred=True):
                continue  # never read, so never changed: a large value is not read to say so
        old, new = before.get(tag), after.get(tag)
        name = prefix + (old or new).keyword if (old or new).keyword else prefix + f"({tag.group:04X},{tag.element:04X})"
        if old is not None and new is not None and old.VR == "SQ" and new.VR == "SQ" and len(old.value) == len(new.value):
            for n, (a, b) in enumerate(zip(old.value, new.value)):
                out.extend(diff_datasets(a, b, f"{name}[{n}]."))
            continue
        if old is None or new is None or old.VR != new.VR or old.value != new.value:
            change = "added" if old is None else "removed" if new is None else "changed"
            out.append({"tag": f"({tag.group:04X},{tag.element:04X})", "name": name, "change": change,
                        "before": _show(old), "after": _show(new)})
    return out


def _lookup(actions: list[dict], lookup) -> dict[str, Any]:
    """One looked-up value as the rule test shows it: which action, what it read, what
    it answered and where the answer came from (the map, its cache, the model, the
    model's cache, a fallback)."""
    action = actions[lookup.action]
    about = {"table": action.get("table")} if action.get("action") == "crosswalk" else {"kind": action.get("kind")}
    return {"action": lookup.action, "name": action.get("action"), "tag": action.get("tag"), **about,
            "key": lookup.key, "value": lookup.value, "source": lookup.source, "cached": lookup.cached,
            "latency_ms": lookup.latency_ms}


def dry_run(config: AppConfig, path: Path, ingest: IngestMetadata, *, at: datetime | None = None,
            services=None) -> dict[str, Any]:
    """What the pipeline would do with the file at ``path``. ``services``: where the
    ``crosswalk`` and ``ai_standardize`` actions get their values (the crosswalk stage's
    live services; default: the config's in-memory tables and the deterministic
    standardizer); every value looked up is listed under ``lookups``."""
    from shared.morph import apply_actions
    from shared.morph_services import MorphServices

    try:
        ds = read_instance(path)
    except Unprocessable as exc:
        return {"file": str(path), "outcome": "quarantine", "reason": str(exc)}
    result: dict[str, Any] = {"file": str(path), "sop_instance_uid": str(ds.SOPInstanceUID)}
    problems = validate_instance(ds, config.settings)
    if problems:
        return {**result, "outcome": "quarantine", "reason": "; ".join(problems)}
    decision = decide(config, ds, ingest, at=at, trace=True)
    result["rules"] = [t.to_dict() for t in decision.trace]
    result["matched"] = [f"{r.ruleset_id}/{r.rule_id}" for r in decision.matched]
    result["default_route"] = decision.default_route
    result["destinations"] = decision.destination_ids
    # a disabled or unknown destination holds its delivery (shared.exceptions.hold_delivery)
    held = {d: why for d in decision.destination_ids if (why := config.why_not_deliverable(d))}
    result["held_destinations"] = held
    result["outcome"] = "route" if len(held) < len(decision.destination_ids) else "hold"
    result["actions"] = decision.actions
    buffer = getattr(ds, "buffer", None)  # the mapped file: both read their unread values from it
    morphed = copy.deepcopy(ds, {id(buffer): buffer} if buffer is not None else None)
    services = (services or MorphServices.from_config(config)).recording()
    try:
        try:
            apply_actions(morphed, decision.actions, services, original_attributes=None)
        finally:
            result["lookups"] = [_lookup(decision.actions, lookup) for lookup in services.recorded]
            if any(a.get("action") == "ai_standardize" for a in decision.actions):
                model = config.settings.ai_standardizer
                result["standardizer"] = model.model if model is not None else "deterministic (no model configured)"
    except Held as exc:  # the crosswalk stage would keep it as a held record
        return {**result, "outcome": "hold", "reason": str(exc)}
    except RetryLater as exc:  # a database or the model that does not answer: the stage would wait
        return {**result, "outcome": "retry", "reason": str(exc)}
    except (Unprocessable, LookupFailed) as exc:
        return {**result, "outcome": "exception", "reason": str(exc)}
    result["diff"] = diff_datasets(ds, morphed)
    before, after = declared(ds), declared(morphed)
    if before != after:
        # PS3.5 6.1: the morph converts to ISO_IR 192 when a new value needs it
        result["character_set"] = {
            "before": joined(before) or None, "after": joined(after),
            "why": "a new value has characters the instance's Specific Character Set cannot hold; "
                   "every text element is re-encoded as UTF-8"}
    result["log_original_attributes"] = decision.log_original_attributes
    return result
