"""Values with their VR in mind (PS3.5 section 6.2): validation of configured values,
conversion of text to element values, and comparison keys for conditions."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from typing import Any

from pydicom import config as pydicom_config
from pydicom.valuerep import DA, DT, TM, validate_value

INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV", "IS", "AT"}
FLOAT_VRS = {"FL", "FD", "DS", "OF", "OD"}
NUMERIC_VRS = INT_VRS | FLOAT_VRS
TEMPORAL_VRS = {"DA", "TM", "DT"}
BINARY_VRS = {"OB", "OW", "OL", "OV", "OF", "OD", "UN", "SQ"}


def _parse_number(vr: str, text: str) -> int | float:
    text = text.strip()
    if vr in INT_VRS and vr != "IS":
        return int(text, 0) if vr == "AT" else int(text)
    return float(text)


def to_element_value(vr: str | None, text: str) -> Any:
    """The Python value pydicom expects for ``vr`` from configured text; multiple
    values are separated by backslashes as in the DICOM encoding."""
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"):
        values = [_parse_number(vr, part) for part in text.split("\\")]
        return values[0] if len(values) == 1 else values
    return text


def check_value_for_vr(vr: str | None, text: str) -> None:
    """Raise ValueError saying why ``text`` is not a valid value for ``vr``."""
    if vr is None:
        return
    if vr in BINARY_VRS:
        raise ValueError(f"values of VR {vr} cannot be set from text")
    try:
        value = to_element_value(vr, text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number, as VR {vr} needs") from None
    for part in value if isinstance(value, list) else (text.split("\\") if isinstance(value, str) else [value]):
        try:
            validate_value(vr, part, pydicom_config.RAISE)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"{part!r} is not valid for VR {vr}: {exc}") from None
    if vr in TEMPORAL_VRS:
        for part in text.split("\\"):
            if part and comparison_key(vr, part) is None:
                raise ValueError(f"{part!r} is not a valid {vr} value")


def comparison_key(vr: str | None, value: Any) -> Any:
    """A key that orders values as the VR means them: numbers numerically, DA/TM/DT as
    dates/times (DT with an offset normalized to UTC). None if the value does not
    parse; text for other VRs."""
    try:
        if vr in NUMERIC_VRS:
            return float(value)
        if vr == "DA":
            return DA(str(value).strip())
        if vr == "TM":
            return TM(str(value).strip())
        if vr == "DT":
            dt: datetime = DT(str(value).strip())
            if dt.tzinfo is not None:
                dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
            return dt
    except (ValueError, TypeError):
        return None
    if vr is None:  # private or unknown: numbers if both sides are numbers
        try:
            return float(value)
        except (ValueError, TypeError):
            return str(value)
    return str(value)


def check_comparable(vr: str | None, value: Any) -> None:
    """For gt/ge/lt/le: the configured value must parse the way the element's VR does."""
    if vr in NUMERIC_VRS or vr in TEMPORAL_VRS:
        key = comparison_key(vr, value)
        if key is None or (vr in TEMPORAL_VRS and not isinstance(key, (date, time, datetime))):
            raise ValueError(f"{value!r} cannot be compared with a {vr} value")
