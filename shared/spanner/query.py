"""A QIDO-RS query (PS3.18 10.6.1), parsed and checked once, then said to each kind of
source: as QIDO-RS parameters to a DICOMweb source, as a C-FIND identifier (PS3.4
C.4.1, Study Root, C.6.2) to a DIMSE source; a C-FIND response comes back as a DICOM
JSON object (PS3.18 Annex F), the form every source's rows are merged in.

Everything here is pure: no I/O, no network library.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")

# QueryRetrieveLevel (0008,0052) of each level, PS3.4 C.4.1.2.1
CFIND_LEVEL = {"study": "STUDY", "series": "SERIES", "instance": "IMAGE"}

# The keys a query may match on, per level: the Study Root keys of PS3.4 C.6.2.1
# (its study level holds the patient's attributes, Table C.6-5), which include the
# required matching attributes of PS3.18 Table 10.6.1-5, and the common optional ones.
MATCH_KEYS: dict[Level, tuple[str, ...]] = {
    "study": (
        # patient (PS3.4 Table C.6-1, carried by the Study Root's study level)
        "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
        "OtherPatientNames", "EthnicGroup", "PatientComments", "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances",
        # study (PS3.4 Table C.6-2)
        "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyInstanceUID", "ReferringPhysicianName",
        "StudyDescription", "ProcedureCodeSequence", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription",
        "ReferencedStudySequence", "PatientAge", "PatientSize", "PatientWeight", "Occupation",
        "AdditionalPatientHistory", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy", "SOPClassesInStudy", "AnatomicRegionsInStudyCodeSequence",
        "IssuerOfAccessionNumberSequence",
    ),
    "series": (  # PS3.4 Table C.6-3
        "Modality", "SeriesNumber", "SeriesInstanceUID", "SeriesDescription", "SeriesDate", "SeriesTime",
        "BodyPartExamined", "Laterality", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "PerformedProcedureStepID", "RequestAttributesSequence", "InstitutionName", "StationName", "OperatorsName",
        "PerformingPhysicianName", "ProtocolName", "Manufacturer", "NumberOfSeriesRelatedInstances",
    ),
    "instance": (  # PS3.4 Table C.6-4
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "ContentDate", "ContentTime", "AcquisitionDate",
        "AcquisitionTime", "AcquisitionDateTime", "ImageType", "Rows", "Columns", "BitsAllocated",
        "NumberOfFrames", "AvailableTransferSyntaxUID",
    ),
}
LEVEL_OF_KEY = {keyword: level for level, keywords in MATCH_KEYS.items() for keyword in keywords}

# The attributes a QIDO-RS origin server returns for each level whatever the query
# (PS3.18 Tables 10.6.3-3, -4, -5), asked for in a C-FIND identifier as return keys.
# Left out: RetrieveURL (a DIMSE SCP has none; the merge writes it) and
# RequestAttributesSequence (an empty sequence key asks for every item, which some
# SCPs refuse; ask for it by matching or with includefield). RetrieveAETitle is
# DIMSE's counterpart of RetrieveURL (PS3.4 C.4.1.1.3.2).
RETURN_KEYS: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
        "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate",
        "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "RetrieveAETitle",
    ),
    "series": (
        "StudyInstanceUID", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID",
        "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "RetrieveAETitle",
    ),
    "instance": (
        "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
        "TimezoneOffsetFromUTC", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
        "RetrieveAETitle",
    ),
}

# Query parameters that are not match keys (PS3.18 10.6.1.2); spanner_config_id names
# the spanner and is the caller's, ignored here.
CONTROL_PARAMETERS = ("includefield", "limit", "offset", "fuzzymatching")
IGNORED_PARAMETERS = ("spanner_config_id",)

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?")
_DT = re.compile(r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?)?)?)?"
                 r"(?:[+-](\d{2})(\d{2}))?")
_INT = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# PS3.4 C.2.2.2.4: wildcards match only for these VRs
_WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_RANGE_HELP = {"DA": "YYYYMMDD", "TM": "HHMMSS", "DT": "YYYYMMDDHHMMSS"}


class QueryError(ValueError):
    """Every problem with a query, each a sentence naming its parameter; the API
    answers 400 with them."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons))


@dataclass(frozen=True)
class QidoQuery:
    """A checked QIDO-RS query. ``match`` maps keywords (``Sequence.Keyword`` for
    sequence matching, PS3.4 C.2.2.2.6) to values as QIDO text, in tag order;
    ``includefield`` holds keywords, or is ``("all",)``; ``study_uid`` and
    ``series_uid`` come from the path (``/studies/{study}/series``)."""

    level: Level
    match: dict[str, str] = field(default_factory=dict)
    includefield: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0
    fuzzymatching: bool = False
    study_uid: str | None = None
    series_uid: str | None = None

    def __hash__(self) -> int:  # hashable despite its dict: nothing changes it after parsing
        return hash((self.level, tuple(self.match.items()), self.includefield, self.limit, self.offset,
                     self.fuzzymatching, self.study_uid, self.series_uid))


def _keyword(attribute_id: str) -> str | None:
    """A keyword or an 8-hex tag as the keyword of a dictionary attribute; None when
    it names none (a private tag has no keyword)."""
    if _TAG.fullmatch(attribute_id):
        return keyword_for_tag(int(attribute_id, 16)) or None
    return attribute_id if tag_for_keyword(attribute_id) is not None else None


def _vr(keyword: str) -> str:
    """The dictionary VR (PS3.6) of a keyword; the first of an ambiguous pair
    ("US or SS")."""
    return dictionary_VR(tag_for_keyword(keyword)).split(" or ")[0]


def _levels_allowed(level: Level, study_uid: str | None, series_uid: str | None) -> tuple[Level, ...]:
    """Whose keys a query may match on (PS3.18 10.6.1.1): a level's own, and the
    levels above it that the path leaves open (``/series`` also takes study keys)."""
    if level == "study":
        return ("study",)
    if level == "series":
        return ("series",) if study_uid else ("study", "series")
    if series_uid:
        return ("instance",)
    return ("series", "instance") if study_uid else LEVELS


def _temporal_ok(vr: str, text: str) -> tuple | None:
    """A sortable tuple of a DA, TM or DT value (PS3.5 Table 6.2-1), or None when it
    is not one."""
    if vr == "DA":
        m = _DA.fullmatch(text)
        if not m:
            return None
        try:
            date(*(int(g) for g in m.groups()))
        except ValueError:
            return None
        return tuple(int(g) for g in m.groups())
    if vr == "TM":
        m = _TM.fullmatch(text)
        parts = [int(g) for g in m.groups() if g is not None] if m else None
        if not parts or parts[0] > 23 or any(p > 59 for p in parts[1:2]) or any(p > 60 for p in parts[2:]):
            return None
        return tuple(parts)
    m = _DT.fullmatch(text)
    if not m:
        return None
    year, month, day, hour, minute, second, oh, om = (int(g) if g is not None else None for g in m.groups())
    try:
        date(year, 1 if month is None else month, 1 if day is None else day)
    except ValueError:
        return None
    if (hour or 0) > 23 or (minute or 0) > 59 or (second or 0) > 60 or (oh or 0) > 14 or (om or 0) > 59:
        return None
    return tuple(p or 0 for p in (year, month, day, hour, minute, second))


def _check_temporal(keyword: str, vr: str, value: str) -> str | None:
    """A single value or a range (PS3.4 C.2.2.2.5: ``A-B``, ``-B``, ``A-``)."""
    if _temporal_ok(vr, value) is not None:  # a DT with a negative UTC offset also has a "-"
        return None
    fmt = _RANGE_HELP[vr]
    bad = (f"{keyword}: {value!r} is not a {vr} value or range ({fmt}, {fmt}-{fmt}, -{fmt} or {fmt}-)")
    if value.count("-") != 1 and vr != "DT":
        return bad
    for i in [i for i, c in enumerate(value) if c == "-"]:
        low, high = value[:i], value[i + 1:]
        if not (low or high):
            continue
        lo = _temporal_ok(vr, low) if low else ()
        hi = _temporal_ok(vr, high) if high else ()
        if lo is None or hi is None:
            continue
        if lo and hi and lo > hi:
            return f"{keyword}: the range {value!r} starts after it ends"
        return None
    return bad


def _uids(value: str) -> list[str]:
    """The UIDs of a UID list: backslash-separated as in DIMSE (PS3.4 C.2.2.2.2), or
    comma-separated as QIDO-RS also allows (PS3.18 8.3.4)."""
    return re.split(r"[\\,]", value)


def _check_value(keyword: str, vr: str, value: str) -> str | None:
    """Why ``value`` cannot be matched against ``keyword`` (VR ``vr``), or None."""
    if value == "":  # universal matching (PS3.4 C.2.2.2.3)
        return None
    if vr == "SQ":
        return f"{keyword}: a sequence matches through one of its attributes ({keyword}.Keyword=value)"
    if vr == "UI":
        bad = [u for u in _uids(value) if not (_UID.fullmatch(u) and len(u) <= 64)]
        return f"{keyword}: {', '.join(repr(u) for u in bad)} is not a UID (digits and dots, at most 64)" if bad else None
    if vr in _RANGE_HELP:
        return _check_temporal(keyword, vr, value)
    if vr in ("IS", "US", "SS", "UL", "SL", "UV", "SV"):
        return None if _INT.fullmatch(value) else f"{keyword}: {value!r} is not an integer"
    if vr in ("DS", "FL", "FD"):
        return None if _DECIMAL.fullmatch(value) else f"{keyword}: {value!r} is not a number"
    if vr not in _WILDCARD_VRS and vr != "UR" and ("*" in value or "?" in value):
        return f"{keyword}: wildcards do not match values of VR {vr}"
    return None


def _match_key(attribute_id: str, allowed: tuple[Level, ...], level: Level) -> tuple[str | None, str | None]:
    """(normalized key, None) or (None, why not) for a query parameter's name."""
    parts = attribute_id.split(".")
    keywords = [_keyword(p) for p in parts]
    if None in keywords:
        return None, f"unknown query key {attribute_id!r}"
    if len(keywords) > 2:
        return None, f"{attribute_id}: sequence matching goes one sequence deep here (Sequence.Keyword)"
    top = keywords[0]
    if len(keywords) == 2 and _vr(top) != "SQ":
        return None, f"{attribute_id}: {top} is not a sequence"
    owner = LEVEL_OF_KEY.get(top)
    if owner is None:
        return None, f"{top}: not a matching key of any level (PS3.4 C.6.2.1)"
    if owner not in allowed:
        return None, f"{top}: a {owner}-level key, not allowed in this {level}-level query (PS3.18 10.6.1.1)"
    return ".".join(keywords), None


def _includefield(value: str, reasons: list[str]) -> list[str]:
    found = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part == "all":
            found.append("all")
            continue
        # a path into a sequence asks for the sequence: the whole of it is returned
        keyword = _keyword(part.split(".")[0])
        if keyword is None:
            reasons.append(f"includefield: unknown attribute {part!r}")
        else:
            found.append(keyword)
    return found


def _int_param(name: str, values: list[str], reasons: list[str], *, minimum: int, maximum: int | None) -> int | None:
    if len(values) > 1:
        reasons.append(f"{name}: given {len(values)} times")
        return None
    text = values[0]
    if not re.fullmatch(r"\d+", text) or int(text) < minimum or (maximum is not None and int(text) > maximum):
        upper = f" to {maximum}" if maximum is not None else " or more"
        reasons.append(f"{name}: {text!r} is not a whole number from {minimum}{upper}")
        return None
    return int(text)


def parse_qido(level: Level, params: list[tuple[str, str]], *, study_uid: str | None = None,
               series_uid: str | None = None, max_limit: int = 1000) -> QidoQuery:
    """Parse and check the query parameters of a QIDO-RS search (PS3.18 10.6.1.2):
    ``{attributeID}={value}`` (a keyword, an 8-hex tag, or ``Sequence.Keyword``),
    ``includefield``, ``limit``, ``offset``, ``fuzzymatching``. Every problem is
    collected, then raised as one :class:`QueryError`."""
    reasons: list[str] = []
    if level not in LEVELS:
        raise QueryError([f"level: {level!r} is not one of {', '.join(LEVELS)}"])
    for name, uid in (("study UID in the path", study_uid), ("series UID in the path", series_uid)):
        if uid is not None and not (_UID.fullmatch(uid) and len(uid) <= 64):
            reasons.append(f"{name}: {uid!r} is not a UID")
    if series_uid is not None and (level != "instance" or study_uid is None):
        reasons.append("series UID in the path: only instance queries within a study name a series")
    if study_uid is not None and level == "study":
        reasons.append("study UID in the path: a study query names no study in its path")

    allowed = _levels_allowed(level, study_uid, series_uid)
    match: dict[str, str] = {}
    controls: dict[str, list[str]] = {name: [] for name in CONTROL_PARAMETERS}
    for name, value in params:
        if name in IGNORED_PARAMETERS:
            continue
        if name in controls:
            controls[name].append(value)
            continue
        key, why = _match_key(name, allowed, level)
        if why:
            reasons.append(why)
        elif key in match:
            reasons.append(f"{key}: given more than once")
        else:
            why = _check_value(key, _vr(key.split(".")[-1]), value)
            if why:
                reasons.append(why)
            match[key] = value

    includefield: list[str] = []
    for value in controls["includefield"]:
        includefield += _includefield(value, reasons)
    limit = (_int_param("limit", controls["limit"], reasons, minimum=1, maximum=max_limit)
             if controls["limit"] else None)
    offset = (_int_param("offset", controls["offset"], reasons, minimum=0, maximum=None)
              if controls["offset"] else 0)
    fuzzy = False
    if controls["fuzzymatching"]:
        if len(controls["fuzzymatching"]) > 1 or controls["fuzzymatching"][0] not in ("true", "false"):
            reasons.append(f"fuzzymatching: {', '.join(map(repr, controls['fuzzymatching']))} is not true or false")
        else:
            fuzzy = controls["fuzzymatching"][0] == "true"
    if reasons:
        raise QueryError(reasons)
    ordered = dict(sorted(match.items(), key=lambda kv: tuple(tag_for_keyword(k) for k in kv[0].split("."))))
    fields = ("all",) if "all" in includefield else tuple(dict.fromkeys(includefield))
    return QidoQuery(level=level, match=ordered, includefield=fields, limit=limit, offset=offset or 0,
                     fuzzymatching=fuzzy, study_uid=study_uid, series_uid=series_uid)


def qido_path(query: QidoQuery) -> str:
    """The resource a DICOMweb source is asked, relative to its base URL (PS3.18
    10.6.1.1): ``studies``, ``studies/{study}/series``, ``series``, ... ."""
    parts = []
    if query.study_uid:
        parts += ["studies", query.study_uid]
    if query.series_uid:
        parts += ["series", query.series_uid]
    parts.append({"study": "studies", "series": "series", "instance": "instances"}[query.level])
    return "/".join(parts)


def to_qido_params(query: QidoQuery) -> list[tuple[str, str]]:
    """The query parameters a DICOMweb source is sent: the match keys as keywords,
    ``includefield`` and ``fuzzymatching``; not ``limit`` and ``offset``, since the
    spanner pages the merged answer itself. The path comes from :func:`qido_path`."""
    params = list(query.match.items())
    params += [("includefield", name) for name in query.includefield]
    if query.fuzzymatching:
        params.append(("fuzzymatching", "true"))
    return params


def _element(keyword: str, text: str | None) -> DataElement:
    """An identifier element with its dictionary VR: an empty return key when
    ``text`` is None or empty, else the matching value."""
    vr = _vr(keyword)
    tag = tag_for_keyword(keyword)
    if vr == "SQ":
        return DataElement(tag, vr, [])
    if not text:
        return DataElement(tag, vr, None)
    if vr == "UI":
        uids = _uids(text)
        return DataElement(tag, vr, uids[0] if len(uids) == 1 else uids)
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return DataElement(tag, vr, int(text))
    if vr in ("FL", "FD"):
        return DataElement(tag, vr, float(text))
    return DataElement(tag, vr, text)


def to_cfind_identifier(query: QidoQuery) -> Dataset:
    """The C-FIND identifier (PS3.4 C.4.1.1.3) of a query, Study Root (C.6.2):
    QueryRetrieveLevel, the match keys with their values (date, time and datetime
    ranges, ``*``/``?`` wildcards and UID lists have the same syntax in DIMSE,
    C.2.2.2), a ``Sequence.Keyword`` key as a sequence of one item (C.2.2.2.6), the
    UIDs of the path as single-value keys of the levels above, and the level's return
    keys and ``includefield``'s (``all``: every key of the levels the query may match)
    as empty elements. ``fuzzymatching`` is not sent: DIMSE negotiates fuzzy semantic
    matching of person names per association (extended negotiation, C.4.1.3.1).
    Match keys of a level above the query's make it a relational query (C.4.1.2.2),
    which an SCP that only does hierarchical ones may refuse."""
    ds = Dataset()
    ds.QueryRetrieveLevel = CFIND_LEVEL[query.level]
    wanted = list(RETURN_KEYS[query.level])
    if query.includefield == ("all",):
        wanted += [k for level in _levels_allowed(query.level, query.study_uid, query.series_uid)
                   for k in MATCH_KEYS[level]]
    else:
        wanted += query.includefield
    for keyword in wanted:
        if tag_for_keyword(keyword) not in ds:
            ds.add(_element(keyword, None))
    for key, value in query.match.items():
        if "." in key:
            sequence, leaf = key.split(".")
            if sequence not in ds or not ds[sequence].value:
                ds.add(DataElement(tag_for_keyword(sequence), "SQ", [Dataset()]))
            ds[sequence].value[0].add(_element(leaf, value))
        else:
            ds.add(_element(key, value))
    if query.study_uid:
        ds.StudyInstanceUID = query.study_uid
    if query.series_uid:
        ds.SeriesInstanceUID = query.series_uid
    if any(not v.isascii() for v in query.match.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 (PS3.5 6.1.2.5.3): what the caller's text is
    return ds


# Not part of a row: the query's level, the response's character set (JSON is
# UTF-8, PS3.18 F.2) and group lengths (retired, PS3.5 7.2).
_DROPPED = {"00080052", "00080005"}


@lru_cache(maxsize=256)
def _asked_tags(query: QidoQuery) -> frozenset[str]:
    """The top-level tags of a query's C-FIND identifier, as DICOM JSON keys; cached,
    as every response row of a query asks the same."""
    return frozenset(f"{e.tag:08X}" for e in to_cfind_identifier(query))


def from_cfind(ds: Dataset, query: QidoQuery | None = None) -> dict:
    """A C-FIND response identifier as a DICOM JSON object (PS3.18 F.2), without
    QueryRetrieveLevel, Specific Character Set (the JSON is Unicode) and group
    lengths; with ``query``, also without the empty elements it did not ask for
    (an SCP may echo keys of its own). Elements whose values do not encode are left
    out (pydicom's ``suppress_invalid_tags``)."""
    row = ds.to_json_dict(suppress_invalid_tags=True)
    asked = None if query is None else _asked_tags(query)
    return {tag: element for tag, element in row.items()
            if tag not in _DROPPED and not tag.endswith("0000")
            and (asked is None or tag in asked or "Value" in element or "InlineBinary" in element
                 or "BulkDataURI" in element)}


def cache_key(spanner_id: str, query: QidoQuery) -> str:
    """A stable sha256 (hex) of a spanner's id and a normalized query. ``limit`` and
    ``offset`` are left out: the spanner pages the merged answer, so one cached
    answer serves every page."""
    normalized = {
        "spanner": spanner_id, "level": query.level, "match": sorted(query.match.items()),
        "includefield": sorted(query.includefield), "fuzzymatching": query.fuzzymatching,
        "study_uid": query.study_uid, "series_uid": query.series_uid,
    }
    return hashlib.sha256(json.dumps(normalized, sort_keys=True).encode()).hexdigest()
