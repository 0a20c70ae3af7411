"""The sources' answers to one query merged into one (DICOM JSON rows, PS3.18 F.2): a row
per study, series or instance, keyed by its UIDs, every source that holds it recorded
on it. Pure: no I/O.

What it does not do, on purpose: merge rows by their position in the sources' arrays
(two sources list different studies in different orders), or add up counts such as
NumberOfStudyRelatedSeries (a study held by two PACS is one study, not twice as big).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.spanner.query import Level

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
KEY_TAGS: dict[Level, tuple[str, ...]] = {
    "study": (STUDY_UID,), "series": (STUDY_UID, SERIES_UID), "instance": (STUDY_UID, SERIES_UID, SOP_UID),
}
RETRIEVE_AE_TITLE = "00080054"  # AE, VM 1-n (PS3.4 C.4.1.1.3.2)
RETRIEVE_URL = "00081190"  # UR (PS3.18 10.6.3)

# The private block naming the sources of a row (PS3.5 7.8.1): a Private Creator
# element (0099,00xx) holding SPANNER_CREATOR reserves elements (0099,xx00-xxFF); the
# source ids are (0099,xx01), LO, VM 1-n, in priority order.
PRIVATE_GROUP = 0x0099
SPANNER_CREATOR = "AXIOM FLOW SPANNER"
SOURCES_OFFSET = 0x01


@dataclass
class SourceAnswer:
    """One source's rows for a query. ``priority``: lower wins; ``order``: the source's
    position in the spanner's list, the tie-break. ``retrieve_ae``: a DIMSE source's
    AE title; ``retrieve_url``: a DICOMweb source's base URL."""

    source_id: str
    priority: int
    order: int
    rows: list[dict] = field(default_factory=list)
    retrieve_ae: str | None = None
    retrieve_url: str | None = None


def _first(row: dict, tag: str):
    values = row.get(tag, {}).get("Value") or [None]
    return values[0]


def _has_value(element: dict) -> bool:
    """An element with a value: one that has none (``{"vr": "PN"}``) is what a source
    answers for an attribute it does not know, so another source's value may fill it."""
    return bool(element.get("Value")) or "InlineBinary" in element or "BulkDataURI" in element


def _is_private(tag: str) -> bool:
    return int(tag[3], 16) % 2 == 1  # an odd group (PS3.5 7.8)


def row_key(level: Level, row: dict) -> tuple[str, ...] | None:
    """The UIDs that identify a row at ``level``; None when one is missing."""
    key = tuple(_first(row, tag) for tag in KEY_TAGS[level])
    return key if all(isinstance(uid, str) and uid for uid in key) else None


def _retrieve_url(level: Level, base: str, key: tuple[str, ...]) -> str:
    """The RetrieveURL of a row on a DICOMweb source (PS3.18 10.4.1 resources)."""
    path = f"studies/{key[0]}"
    if level != "study":
        path += f"/series/{key[1]}"
    if level == "instance":
        path += f"/instances/{key[2]}"
    return f"{base.rstrip('/')}/{path}"


def _creator_block(row: dict) -> int:
    """The block byte xx of the row's SPANNER_CREATOR (an existing one, else the
    first free one from 0x10, PS3.5 7.8.1)."""
    free = None
    for xx in range(0x10, 0x100):
        creator = row.get(f"{PRIVATE_GROUP:04X}00{xx:02X}")
        if creator is None:
            free = xx if free is None else free
        elif creator.get("Value") == [SPANNER_CREATOR]:
            return xx
    if free is None:
        raise ValueError(f"a row has no free private block in group {PRIVATE_GROUP:04X}")
    return free


def sources_of(row: dict) -> list[str]:
    """The ids of the sources holding a merged row, in priority order."""
    for xx in range(0x10, 0x100):
        creator = row.get(f"{PRIVATE_GROUP:04X}00{xx:02X}")
        if creator is not None and creator.get("Value") == [SPANNER_CREATOR]:
            return list(row.get(f"{PRIVATE_GROUP:04X}{xx:02X}{SOURCES_OFFSET:02X}", {}).get("Value", []))
    return []


def _record_sources(level: Level, row: dict, key: tuple[str, ...] | None, holders: list[SourceAnswer]) -> None:
    """Write on ``row`` the sources that hold it: RetrieveAETitle lists the DIMSE
    sources' AE titles, RetrieveURL points at the first DICOMweb source's copy, the
    private block lists every source id (all in priority order). A row no DIMSE or
    DICOMweb source of known address holds keeps what its source said."""
    titles = list(dict.fromkeys(h.retrieve_ae for h in holders if h.retrieve_ae))
    if titles:
        row[RETRIEVE_AE_TITLE] = {"vr": "AE", "Value": titles}
    web = next((h for h in holders if h.retrieve_url), None)
    if web is not None and key is not None:
        row[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(level, web.retrieve_url, key)]}
    xx = _creator_block(row)
    row[f"{PRIVATE_GROUP:04X}00{xx:02X}"] = {"vr": "LO", "Value": [SPANNER_CREATOR]}
    row[f"{PRIVATE_GROUP:04X}{xx:02X}{SOURCES_OFFSET:02X}"] = {
        "vr": "LO", "Value": list(dict.fromkeys(h.source_id for h in holders))}


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")  # no number: after those that have one


def _sort_key(level: Level, row: dict) -> tuple:
    """Series by SeriesNumber and instances by InstanceNumber within their study and
    series (then by UID); studies by UID here, then newest first in ``merge``."""
    if level == "study":
        return (_first(row, STUDY_UID),)
    if level == "series":
        return (_first(row, STUDY_UID), _number(_first(row, "00200011")), _first(row, SERIES_UID))
    return (_first(row, STUDY_UID), _first(row, SERIES_UID), _number(_first(row, "00200013")),
            _first(row, SOP_UID))


def _ordered(level: Level, rows: list[dict]) -> list[dict]:
    rows = sorted(rows, key=lambda r: _sort_key(level, r))
    if level == "study":  # newest first; the sort is stable, so UID order holds within a date and time
        rows.sort(key=lambda r: (_first(r, "00080020") or "", _first(r, "00080030") or ""), reverse=True)
    return rows


def merge(level: Level, answers: list[SourceAnswer], *, deduplicate: bool = True) -> list[dict]:
    """One list of rows from every source's answer.

    Rows with the same key (StudyInstanceUID; + SeriesInstanceUID; + SOPInstanceUID)
    become one: each attribute's value is the one of the winning source (lowest
    priority, then first listed) that has a value; attributes only other sources have
    are added in that order, private ones only from the winner's row. Counts are never summed: they are attributes like any
    other, the winner's. ``deduplicate=False`` keeps one row per source. Every row
    records its sources (:func:`_record_sources`). A row without its key UIDs is kept
    as its source sent it, not merged (its source recorded).

    Order: keyed rows first (studies newest first by StudyDate and StudyTime, then by
    UID; series and instances by study, series, number, UID; equal keys by source
    priority), then the rows without keys, by source priority and position. The input
    rows are not changed; their element objects are shared, never mutated."""
    by_priority = sorted(answers, key=lambda a: (a.priority, a.order))
    merged: dict[tuple[str, ...], tuple[dict, list[SourceAnswer]]] = {}
    separate: list[dict] = []  # deduplicate=False: one per source and key
    unkeyed: list[dict] = []
    for answer in by_priority:
        for source_row in answer.rows:
            row = {tag.upper(): element for tag, element in source_row.items()}
            key = row_key(level, row)
            if key is None or not deduplicate:
                _record_sources(level, row, key, [answer])
                (unkeyed if key is None else separate).append(row)
            elif key not in merged:
                merged[key] = (row, [answer])
            else:
                winner, holders = merged[key]
                for tag, element in row.items():
                    if _is_private(tag):
                        continue  # its meaning hangs on its creator element in the same row (PS3.5 7.8.1)
                    if tag not in winner or (not _has_value(winner[tag]) and _has_value(element)):
                        winner[tag] = element
                if holders[-1] is not answer:  # the same key twice in one answer: one holder
                    holders.append(answer)
    for key, (row, holders) in merged.items():
        _record_sources(level, row, key, holders)
    return _ordered(level, [row for row, _ in merged.values()] + separate) + unkeyed


def apply_paging(rows: list[dict], limit: int | None, offset: int = 0) -> list[dict]:
    """The page of merged rows a query's ``limit`` and ``offset`` ask for (PS3.18
    10.6.1.2.2); no limit: every row from ``offset`` on."""
    return rows[offset:] if limit is None else rows[offset:offset + limit]
