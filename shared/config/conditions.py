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

    tag: TagAddress
    op: TagOp = "eq"
    value: Scalar | list[Scalar] | None = None
    case_insensitive: bool = False
    match: Literal["any", "all"] = "any"

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

    association: AssociationField
    op: Literal["eq", "ne", "in", "not_in", "startswith", "regex"] = "eq"
    value: str | list[str]
    case_insensitive: bool = False

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
    all: list["Condition"] = Field(min_length=1)


class AnyOf(Doc):
    any: list["Condition"] = Field(min_length=1)


class NotOf(Doc):
    not_: "Condition" = Field(alias="not")


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

    id: str
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    start: time = time(0, 0)
    end: time = time(0, 0)  # start == end: the whole day
    timezone: str = "UTC"
    date_from: date | None = None
    date_to: date | None = None

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
