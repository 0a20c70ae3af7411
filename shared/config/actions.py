"""Morph actions, applied by :mod:`shared.morph`, and the crosswalk tables the
``crosswalk`` action looks values up in."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from shared.config.base import ActionTagAddress, Doc, Regex, VRName, check_value_any_vr
from shared.config.crosswalk import query_parameters
from shared.dicom.tags import parse_path
from shared.regex import compile_regex
from shared.templates import check_template, has_fields

TEMPLATE_HELP = ("May be a template of other attributes' values: `{PatientID}-{AccessionNumber}`, `{PatientName|upper}` "
                 "(or `|lower`); `{{` and `}}` are literal braces.")


class _TagAction(Doc):
    tag: ActionTagAddress = Field(examples=["InstitutionName", "(0008,0080)", "OtherPatientIDsSequence[*].PatientID"],
                                  description="The element acted on (`[*]`: in every item).")


class SetAction(_TagAction):
    """Set the element, creating it (and sequences/items on its path) if missing."""

    action: Literal["set"] = Field(description="Selects this action.")
    value: str = Field(examples=["AXIOM FLOW", "{PatientID}-{AccessionNumber}"],
                       description="The new value. " + TEMPLATE_HELP)
    vr: VRName = Field(default=None, examples=["LO"],
                       description="VR of an element created; none: the dictionary's (needed for private tags).")

    @model_validator(mode="after")
    def _value_valid_for_vr(self):
        check_template(self.value)
        if not has_fields(self.value):
            check_value_any_vr(self.vr or parse_path(self.tag).dictionary_vr(), self.value)
        return self


class DeleteAction(Doc):
    """Delete an element (every item's element with [*]), or a whole ``group``:
    ``private`` for every private element, or a 4-hex-digit group such as ``6000``."""

    action: Literal["delete"] = Field(description="Selects this action.")
    tag: ActionTagAddress | None = Field(default=None, examples=["PatientComments", "(0019,\"SIEMENS MR HEADER\",08)"],
                                         description="The element to delete; give this or `group`.")
    group: str | None = Field(default=None, examples=["private", "6000"],
                              description="`private`, or four hex digits: delete every element of the group.")

    @model_validator(mode="after")
    def _one_target(self):
        if (self.tag is None) == (self.group is None):
            raise ValueError("delete needs exactly one of tag or group")
        if self.group is not None and self.group != "private" and not re.fullmatch(r"[0-9A-Fa-f]{4}", self.group):
            raise ValueError("group must be 'private' or four hex digits such as '6000'")
        if self.group is not None and self.group.upper() in ("0002", "7FE0"):
            raise ValueError(f"group {self.group} cannot be deleted (file meta / pixel data)")
        return self


class PrependAction(_TagAction):
    """Put text before the element's value."""

    action: Literal["prepend"] = Field(description="Selects this action.")
    value: str = Field(examples=["ANON-"], description="The text put before. " + TEMPLATE_HELP)

    _template = field_validator("value")(lambda cls, v: check_template(v))


class SuffixAction(_TagAction):
    """Put text after the element's value."""

    action: Literal["suffix"] = Field(description="Selects this action.")
    value: str = Field(examples=["-{StationName}"], description="The text put after. " + TEMPLATE_HELP)

    _template = field_validator("value")(lambda cls, v: check_template(v))


class RegexReplaceAction(_TagAction):
    """RE2 substitution; the replacement may use \\1 or \\g<name> group references."""

    action: Literal["regex_replace"] = Field(description="Selects this action.")
    pattern: Regex = Field(examples=["^(\\d{4})(\\d{2})"], description="The RE2 regular expression searched for.")
    replacement: str = Field(examples=["\\1-\\2"], description="What each match is replaced with.")
    count: int = Field(default=0, ge=0, description="Matches replaced at most; 0: every match.")

    @model_validator(mode="after")
    def _groups_exist(self):
        regex = compile_regex(self.pattern)
        for m in re.finditer(r"\\(\d+)|\\g<([^>]*)>", self.replacement):
            ref = m.group(1) or m.group(2)
            if ref.isdigit():
                if int(ref) > regex.groups:
                    raise ValueError(f"replacement refers to group {ref}; the pattern has {regex.groups} group(s)")
            elif ref not in regex.groupindex:
                raise ValueError(f"replacement refers to group {ref!r}, which the pattern does not name")
        return self


class CopyAction(Doc):
    """Copy an element's value to another element (created if missing)."""

    action: Literal["copy"] = Field(description="Selects this action.")
    from_: ActionTagAddress = Field(alias="from", examples=["AccessionNumber"], description="The element copied.")
    to: ActionTagAddress = Field(examples=["StudyID"], description="The element written.")
    vr: VRName = Field(default=None, examples=["SH"],
                       description="VR of the element written when it is new; none: the dictionary's, else the "
                                   "source's.")


class MoveAction(Doc):
    """Copy, then delete the source."""

    action: Literal["move"] = Field(description="Selects this action.")
    from_: ActionTagAddress = Field(alias="from", examples=["(0019,\"ACME 1.1\",10)"],
                                    description="The element moved (deleted after the copy).")
    to: ActionTagAddress = Field(examples=["StudyComments"], description="The element written.")
    vr: VRName = Field(default=None, examples=["LT"],
                       description="VR of the element written when it is new; none: the dictionary's, else the "
                                   "source's.")


class CrosswalkAction(_TagAction):
    """Look the element's value up in a crosswalk table and write the result to ``to``
    (default: the same element)."""

    action: Literal["crosswalk"] = Field(description="Selects this action.")
    table: str = Field(examples=["site-codes"], description="Id of the crosswalk table.")
    to: ActionTagAddress | None = Field(default=None, examples=["InstitutionCodeSequence[0].CodeValue"],
                                        description="The element written; none: `tag` itself.")
    key_tags: list[ActionTagAddress] | None = Field(
        default=None, min_length=1, max_length=8, examples=[["IssuerOfPatientID", "PatientID"]],
        description="The elements whose values make the key, in the order of the table's `keys` (e.g. the issuer, "
                    "then `tag`); `tag` itself gives the value of the place being written. None: `tag`'s value "
                    "alone.")
    on_missing: Literal["keep", "fail", "error", "hold", "default"] | None = Field(
        default=None,
        description="When the table has no entry: `keep` the value, `fail` into an exception record (`error` is "
                    "the older spelling), `hold` the instance until an operator releases it, or write `default`. "
                    "None: the table's `on_miss`.")
    default: str | None = Field(default=None, examples=["UNKNOWN"],
                                description="The value written for `on_missing: default`.")

    @model_validator(mode="after")
    def _default_given(self):
        if self.on_missing == "default" and self.default is None:
            raise ValueError("on_missing 'default' needs a default value")
        if self.default is not None:
            check_value_any_vr(parse_path(self.to or self.tag).dictionary_vr(), self.default)
        return self


class AIStandardizeAction(_TagAction):
    """Standardize a free-text value (e.g. a series description) with the configured
    AI standardizer, optionally constrained to ``allowed`` values."""

    action: Literal["ai_standardize"] = Field(description="Selects this action.")
    kind: str = Field(default="free_text", examples=["series_description"],
                      description="What the value is, as told to the standardizer.")
    to: ActionTagAddress | None = Field(default=None, examples=["SeriesDescription"],
                                        description="The element written; none: `tag` itself.")
    allowed: list[str] | None = Field(default=None, examples=[["T1 AX", "T2 AX", "FLAIR AX"]],
                                      description="The values the answer must be one of; none: any text.")
    instructions: str | None = Field(default=None, examples=["Use the site's abbreviations."],
                                     description="Further guidance for the standardizer.")


Action = Annotated[
    Union[SetAction, DeleteAction, PrependAction, SuffixAction, RegexReplaceAction, CopyAction,
          MoveAction, CrosswalkAction, AIStandardizeAction],
    Field(discriminator="action"),
]


class CrosswalkSync(Doc):
    """Copy a database map into the document store on a schedule and answer its
    lookups from there (:mod:`shared.crosswalk_sync`): routing goes on while the
    database is down, and a lookup costs a document read, not a query."""

    enabled: bool = Field(default=True, description="Sync the map on schedule and serve it from the copy; false: "
                                                     "query the database for every lookup again.")
    every_s: float = Field(default=3600.0, ge=10, le=7 * 86400, examples=[900],
                           description="Seconds between two syncs of the whole table (rows added, changed or removed "
                                       "in the database reach the copy after at most this long).")
    batch_size: int = Field(default=1000, ge=10, le=100_000,
                            description="Rows fetched from the database at a time while syncing.")


class CrosswalkTable(Doc):
    """A crosswalk map: either in memory (``entries``) or read from a database
    (``source`` with ``table``, ``keys`` and ``value``, or a parameterized ``query``)."""

    id: str = Field(examples=["site-codes"], description="Unique id of the table; `crosswalk` actions name it.")
    entries: dict[str, str] = Field(default_factory=dict, examples=[{"ST MARY HOSP": "SMH"}],
                                    description="Each key (an exact value) and what it becomes (in-memory tables).")
    case_insensitive: bool = Field(
        default=False, description="Match keys ignoring case (a database column whose collation ignores case, "
                                   "MySQL's default, does so anyway).")
    source: str | None = Field(default=None, examples=["mpi"],
                               description="Id of the crosswalk source (database) to look keys up in; none: "
                                           "`entries`.")
    table: str | None = Field(default=None, examples=["mrn_map"],
                              description="The database table holding keys and values (with `source`).")
    schema_: str | None = Field(default=None, alias="schema", examples=["public"],
                                description="The schema the table is in; none: the user's default.")
    keys: list[str] = Field(default_factory=list, min_length=0, max_length=8, examples=[["issuer", "mrn"]],
                            description="The key columns, in the order of the values looked up (e.g. issuer, then "
                                        "patient ID); with `query`, the names of its bound parameters.")
    value: str | None = Field(default=None, examples=["research_id"],
                              description="The column holding the value a key maps to (with `table`).")
    query: str | None = Field(
        default=None, examples=["SELECT research_id FROM mrn_map WHERE issuer = :issuer AND lower(mrn) = :mrn"],
        description="Instead of `table`: a SELECT whose first column of the first row is the value, with one bound "
                    "parameter (`:name`) per key; with `case_insensitive` the keys are passed lower-cased.")
    on_miss: Literal["keep", "fail", "hold", "default"] = Field(
        default="keep",
        description="When the map has no entry for a key: `keep` the value, `fail` into an exception record, "
                    "`hold` the instance until an operator releases it, or write `default`. An action's "
                    "`on_missing` overrides it.")
    default: str | None = Field(default=None, examples=["UNKNOWN"],
                                description="The value written for `on_miss: default`.")
    cache_ttl_s: float = Field(default=300.0, ge=0, le=86400,
                               description="Seconds a looked-up value (or a miss) is served from the cache; 0: no "
                                           "cache.")
    cache_size: int = Field(default=10000, ge=1, le=10_000_000,
                            description="Most keys kept in the cache of this map.")
    sync: CrosswalkSync | None = Field(
        default=None, examples=[{"every_s": 900}],
        description="Copy the whole `table` into the document store on a schedule and look keys up there, so a "
                    "database outage does not stop routing; none: query the database (through the cache).")

    @model_validator(mode="after")
    def _one_kind(self):
        if self.on_miss == "default" and self.default is None:
            raise ValueError("on_miss 'default' needs a default value")
        if self.source is None:
            if self.table or self.query or self.keys or self.value or self.sync:
                raise ValueError("`table`, `query`, `keys`, `value` and `sync` need a `source`")
            return self
        if self.entries:
            raise ValueError("a map with a `source` has no `entries`")
        if not self.keys:
            raise ValueError("a database map needs `keys`")
        if (self.table is None) == (self.query is None):
            raise ValueError("a database map needs either `table` (with `value`) or `query`")
        if self.table is not None and not self.value:
            raise ValueError("a map with `table` needs `value`, the column to read")
        if self.sync is not None and self.query is not None:
            raise ValueError("`sync` needs a `table` map (keys and value columns): a `query` with bound parameters "
                             "cannot be read as a whole")
        if self.query is not None:
            missing = set(self.keys) - query_parameters(self.query)
            if missing:
                raise ValueError(f"the query has no bound parameter for {', '.join(sorted(missing))}")
        return self

    @property
    def synced(self) -> bool:
        """Whether lookups are answered from the synced copy of the table."""
        return self.source is not None and self.sync is not None and self.sync.enabled

    @property
    def key_count(self) -> int:
        """How many values a key has (an in-memory table: one)."""
        return len(self.keys) if self.source is not None else 1
