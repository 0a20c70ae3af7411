"""Conditions on an instance (its attributes, how it arrived) and the schedules that
switch rules on and off; evaluated by :mod:`shared.rules` and :mod:`shared.schedules`."""

from __future__ import annotations

from datetime import date, time
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from shared.config.base import Doc, TagAddress, check_network, check_regex
from shared.dicom.tags import parse_path
from shared.dicom.values import check_comparable

TagOp = Literal[
    "eq", "ne", "gt", "ge", "lt", "le", "exists", "not_exists", "contains", "not_contains",
    "startswith", "endswith", "regex", "in", "not_in",
]
Scalar = Union[str, int, float]


class TagCondition(Doc):
    """A condition on an attribute. Numbers compare as numbers (by VR), DA/TM/DT as
    dates/times. A multi-valued element matches if any value matches, or every value
    with ``match: all``. ``ne``/``not_*`` are the negation of their positive operator."""

    tag: TagAddress = Field(examples=["Modality", "(0008,0060)", "ReferencedStudySequence[*].ReferencedSOPInstanceUID"],
                            description="The attribute tested.")
    op: TagOp = Field(default="eq", description="The comparison; `exists`/`not_exists` take no value, `in`/`not_in` "
                                                "a list, the others one value.")
    value: Scalar | list[Scalar] | None = Field(
        default=None, examples=["CT", 5, ["CT", "MR"], "^1\\.2\\.840\\."],
        description="What the attribute is compared with (a pattern for `regex`, a list for `in`/`not_in`).")
    case_insensitive: bool = Field(default=False, description="Compare text ignoring case.")
    match: Literal["any", "all"] = Field(
        default="any", description="For a multi-valued attribute: match if `any` value matches, or only if `all` do.")

    @model_validator(mode="after")
    def _value_fits_op(self):
        if self.op in ("exists", "not_exists"):
            if self.value is not None:
                raise ValueError(f"operator {self.op!r} takes no value")
            return self
        if self.value is None:
            raise ValueError(f"operator {self.op!r} needs a value")
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"operator {self.op!r} needs a non-empty list of values")
        elif isinstance(self.value, list):
            raise ValueError(f"operator {self.op!r} takes one value, not a list")
        if self.op == "regex":
            check_regex(str(self.value))
        if self.op in ("gt", "ge", "lt", "le"):
            vr = parse_path(self.tag).dictionary_vr()
            check_comparable(vr, self.value)
        return self


AssociationField = Literal["calling_ae", "called_ae", "source_ip", "source_type", "source_id"]


class AssociationCondition(Doc):
    """A condition on how the instance arrived. For ``source_ip``, ``eq``/``in`` test
    membership of CIDR networks (IPv4 or IPv6; a bare address is a /32 or /128)."""

    association: AssociationField = Field(
        description="What is tested: the `calling_ae` or `called_ae` title, the `source_ip` address, how the "
                    "instance arrived (`source_type`), or the id of its listener or source (`source_id`).")
    op: Literal["eq", "ne", "in", "not_in", "startswith", "regex"] = Field(
        default="eq", description="The comparison; `in`/`not_in` take a list.")
    value: str | list[str] = Field(examples=["CT_SCANNER_1", ["10.1.0.0/16", "192.168.4.7"]],
                                   description="What it is compared with: CIDR networks for `source_ip`.")
    case_insensitive: bool = Field(default=False, description="Compare text ignoring case.")

    @model_validator(mode="after")
    def _value_fits_op(self):
        if self.op in ("in", "not_in") and (not isinstance(self.value, list) or not self.value):
            raise ValueError(f"operator {self.op!r} needs a non-empty list of values")
        if self.op not in ("in", "not_in") and isinstance(self.value, list):
            raise ValueError(f"operator {self.op!r} takes one value, not a list")
        if self.op == "regex":
            check_regex(self.value)
        if self.association == "source_ip":
            if self.op not in ("eq", "ne", "in", "not_in"):
                raise ValueError("source_ip takes eq, ne, in or not_in with CIDR networks")
            for net in self.value if isinstance(self.value, list) else [self.value]:
                check_network(net)
        return self


class AllOf(Doc):
    """True when every condition in the list is."""

    all: list["Condition"] = Field(min_length=1, description="The conditions, all of which must hold.")


class AnyOf(Doc):
    """True when at least one condition in the list is."""

    any: list["Condition"] = Field(min_length=1, description="The conditions, one of which must hold.")


class NotOf(Doc):
    """True when the condition is not."""

    not_: "Condition" = Field(alias="not", description="The condition that must not hold.")


_CONDITION_KEYS = {"tag": TagCondition, "association": AssociationCondition, "all": AllOf, "any": AnyOf, "not": NotOf}


def _condition_kind(value: Any) -> str | None:
    """Pick the condition model by its leading key, so errors name one model only."""
    if isinstance(value, dict):
        return next((key for key in _CONDITION_KEYS if key in value), None)
    return next((key for key, model in _CONDITION_KEYS.items() if isinstance(value, model)), None)


Condition = Annotated[
    Union[tuple(Annotated[model, Tag(key)] for key, model in _CONDITION_KEYS.items())],
    Discriminator(
        _condition_kind,
        custom_error_type="condition_kind",
        custom_error_message="a condition needs one of the keys tag, association, all, any, not",
    ),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


# --- schedules ----------------------------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Schedule(Doc):
    """A reusable time window. ``start`` > ``end`` is an overnight window: it opens on
    the listed day and closes the next morning. Times are local to ``timezone`` (IANA),
    so DST changes are followed. ``date_from``/``date_to`` (inclusive) bound the local
    date on which a window opens."""

    id: str = Field(examples=["nights"], description="Unique id of the schedule; rules name it in `schedule`.")
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1, examples=[["mon", "tue", "wed"]],
                                description="The days on which the window opens.")
    start: time = Field(default=time(0, 0), examples=["20:00"], description="Local time the window opens.")
    end: time = Field(default=time(0, 0), examples=["06:30"],
                      description="Local time the window closes; equal to `start`: the whole day.")
    timezone: str = Field(default="UTC", examples=["Europe/Amsterdam"], description="IANA time zone of the times.")
    date_from: date | None = Field(default=None, examples=["2025-01-01"],
                                   description="First local date on which the window opens; none: no limit.")
    date_to: date | None = Field(default=None, examples=["2025-12-31"],
                                 description="Last local date on which the window opens; none: no limit.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _dates_in_order(self):
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")
        return self
