"""The spanned view for DIMSE clients: a listener with ``spanner`` answers C-FIND (Study
Root Query/Retrieve Information Model - FIND, PS3.4 C.4.1) from that spanner's sources,
through the same query, fan-out and merge as the QIDO-RS endpoints.

The request identifier's non-empty elements are the matching keys and its empty ones
the return keys (PS3.4 C.2.2.1), turned into a QIDO-RS query
(:func:`identifier_params`); each merged row goes back as a pending response holding
the keys asked for, plus Retrieve AE Title (PS3.4 C.4.1.2.3). A C-CANCEL stops the
responses (0xFE00). A query the spanner cannot take answers 0xA900 (identifier does
not match SOP class); a source that did not answer is logged, the others' rows sent."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterator

from pydicom import Dataset

from shared.spanner.engine import run_sync, spanning
from shared.spanner.query import QueryError, parse_qido

if TYPE_CHECKING:  # pragma: no cover
    from shared.ports import Secrets

log = logging.getLogger(__name__)

LEVELS = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
STATUS_CANCELLED = 0xFE00
STATUS_PENDING = 0xFF00
STATUS_SUCCESS = 0x0000
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000
ALWAYS_RETURNED = ("QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet")


def identifier_params(identifier: Dataset) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(level, QIDO-RS match parameters, return keys) of a C-FIND identifier."""
    level = LEVELS.get(str(identifier.get("QueryRetrieveLevel", "")).upper())
    if level is None:
        raise QueryError([f"QueryRetrieveLevel {identifier.get('QueryRetrieveLevel')!r} is not STUDY, SERIES or "
                          f"IMAGE"])
    params, returned = [], []
    for elem in identifier:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet") or elem.VR == "SQ":
            continue
        name = elem.keyword or f"{elem.tag.group:04X}{elem.tag.element:04X}"
        returned.append(name)
        if elem.value not in (None, "", b""):
            value = "\\".join(str(v) for v in elem.value) if elem.VM > 1 else str(elem.value)
            params.append((name, value))
    params += [("includefield", name) for name in returned if all(name != p for p, _ in params)]
    return level, params, returned


def handle_find(event, spanner_id: str, spanners: Callable[[], list], sources: Callable[[], list],
                secrets: "Secrets", docs=None) -> Iterator:
    """pynetdicom's EVT_C_FIND handler of a listener with ``spanner``: ``spanners`` and
    ``sources`` give the config's now."""
    try:
        level, params, returned = identifier_params(event.identifier)
        query = parse_qido(level, params)
    except QueryError as exc:
        log.info("C-FIND from %s refused: %s", event.assoc.requestor.ae_title, exc)
        yield STATUS_IDENTIFIER_MISMATCH, None
        return
    spanner = next((s for s in spanners() if s.id == spanner_id), None)
    if spanner is None:
        log.error("C-FIND: spanner %r is not configured", spanner_id)
        yield STATUS_UNABLE_TO_PROCESS, None
        return
    result = run_sync(spanning(secrets, docs).query(spanner, {s.id: s for s in sources()}, query))
    if result.missing:
        log.warning("C-FIND on spanner %s: %s", spanner.id, result.warning())
    keep = set(returned) | set(ALWAYS_RETURNED)
    for row in result.rows:
        if event.is_cancelled:
            yield STATUS_CANCELLED, None
            return
        found = Dataset.from_json(row)
        answer = Dataset()
        for elem in found:
            if elem.keyword in keep or (not elem.keyword and f"{elem.tag.group:04X}{elem.tag.element:04X}" in keep):
                answer.add(elem)
        answer.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
        yield STATUS_PENDING, answer
    yield STATUS_SUCCESS, None
