"""Morph actions, applied by :mod:`shared.morph`, and the crosswalk tables the
``crosswalk`` action looks values up in."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from shared.config.base import ActionTagAddress, Doc, Regex, VRName, check_value_any_vr
from shared.dicom.tags import parse_path
from shared.regex import compile_regex
from shared.templates import check_template, has_fields

# Values may be templates built from other tags: "{PatientID}-{AccessionNumber}",
# with "|upper" or "|lower": "{PatientName|upper}". "{{" and "}}" are literal braces.


class _TagAction(Doc):
    tag: ActionTagAddress


class SetAction(_TagAction):
    """Set the element, creating it (and sequences/items on its path) if missing."""

    action: Literal["set"]
    value: str
    vr: VRName = None

    @model_validator(mode="after")
    def _value_valid_for_vr(self):
        check_template(self.value)
        if not has_fields(self.value):
            check_value_any_vr(self.vr or parse_path(self.tag).dictionary_vr(), self.value)
        return self


class DeleteAction(Doc):
    """Delete an element (every item's element with [*]), or a whole ``group``:
    ``private`` for every private element, or a 4-hex-digit group such as ``6000``."""

    action: Literal["delete"]
    tag: ActionTagAddress | None = None
    group: str | None = None

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
    action: Literal["prepend"]
    value: str

    _template = field_validator("value")(lambda cls, v: check_template(v))


class SuffixAction(_TagAction):
    action: Literal["suffix"]
    value: str

    _template = field_validator("value")(lambda cls, v: check_template(v))


class RegexReplaceAction(_TagAction):
    """RE2 substitution; the replacement may use \\1 or \\g<name> group references."""

    action: Literal["regex_replace"]
    pattern: Regex
    replacement: str
    count: int = Field(default=0, ge=0)  # 0: every match

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
    action: Literal["copy"]
    from_: ActionTagAddress = Field(alias="from")
    to: ActionTagAddress
    vr: VRName = None


class MoveAction(Doc):
    """Copy, then delete the source."""

    action: Literal["move"]
    from_: ActionTagAddress = Field(alias="from")
    to: ActionTagAddress
    vr: VRName = None


class CrosswalkAction(_TagAction):
    """Look the element's value up in a crosswalk table and write the result to ``to``
    (default: the same element)."""

    action: Literal["crosswalk"]
    table: str
    to: ActionTagAddress | None = None
    on_missing: Literal["keep", "error", "default"] = "keep"
    default: str | None = None

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

    action: Literal["ai_standardize"]
    kind: str = "free_text"
    to: ActionTagAddress | None = None
    allowed: list[str] | None = None
    instructions: str | None = None


Action = Annotated[
    Union[SetAction, DeleteAction, PrependAction, SuffixAction, RegexReplaceAction, CopyAction,
          MoveAction, CrosswalkAction, AIStandardizeAction],
    Field(discriminator="action"),
]


class CrosswalkTable(Doc):
    """An in-memory crosswalk: exact keys to values (external databases come later)."""

    id: str
    entries: dict[str, str] = Field(default_factory=dict)
    case_insensitive: bool = False
