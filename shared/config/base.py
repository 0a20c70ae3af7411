"""The base of every config document and the field checks they share: tag addresses
(:mod:`shared.dicom.tags`), VR names (PS3.5 section 6.2), RE2 patterns and IP networks."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydicom.valuerep import VR as _VR

from shared.dicom.tags import TagAddressError, parse_path
from shared.dicom.values import check_value_for_vr
from shared.regex import compile_regex

_VR_NAMES = frozenset(str(vr) for vr in _VR)


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- tag addresses ------------------------------------------------------------------


def _check_path(value: str) -> str:
    try:
        parse_path(value)
    except TagAddressError as exc:
        raise ValueError(str(exc)) from None
    return value


TagAddress = Annotated[str, AfterValidator(_check_path)]


def _check_target(value: str) -> str:
    """Actions never touch file meta (group 0002) or pixel data (group 7FE0)."""
    for step in parse_path(value).steps:
        if step.tag is not None and (step.tag >> 16) in (0x0002, 0x7FE0):
            raise ValueError(f"{value!r}: group {step.tag >> 16:04X} (file meta / pixel data) cannot be changed by actions")
    return value


ActionTagAddress = Annotated[str, AfterValidator(_check_path), AfterValidator(_check_target)]


def check_value_any_vr(vr: str | None, text: str) -> None:
    """check_value_for_vr, where a dictionary VR such as ``US or SS`` accepts a value
    valid for any one of its VRs."""
    options = vr.split(" or ") if vr else [vr]
    errors = []
    for option in options:
        try:
            return check_value_for_vr(option, text)
        except ValueError as exc:
            errors.append(exc)
    raise errors[0]


def _check_vr(value: str | None) -> str | None:
    if value is not None and value not in _VR_NAMES:
        raise ValueError(f"unknown VR {value!r}")
    return value


VRName = Annotated[str | None, AfterValidator(_check_vr)]


def check_regex(pattern: str) -> str:
    """Patterns are compiled by RE2 (linear time, no catastrophic backtracking), so a
    hostile pattern in config cannot stall a worker; what RE2 refuses is refused here."""
    try:
        compile_regex(pattern)
    except ValueError as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Regex = Annotated[str, AfterValidator(check_regex)]


def check_network(value: str) -> str:
    """An IPv4 or IPv6 network in CIDR notation; a bare address is a /32 or /128, and
    host bits are allowed (``10.1.2.3/8`` is ``10.0.0.0/8``)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP network: {value!r} ({exc})") from None
    return value


IPNetwork = Annotated[str, AfterValidator(check_network)]
