"""Tag addresses as written in config.

Accepted forms (PS3.5 section 7.1 for the group/element notation):
``PatientID`` (a dictionary keyword), ``(0010,0020)`` and ``00100020``.
Sequence paths and private tags by creator arrive with the full rule engine.
"""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

_PAREN = re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$")
_HEX8 = re.compile(r"^[0-9A-Fa-f]{8}$")


class TagAddressError(ValueError):
    """A tag address that names no attribute."""


def parse_tag(address: str) -> BaseTag:
    """Return the tag for ``address`` or raise :class:`TagAddressError`."""
    text = address.strip()
    if m := _PAREN.match(text):
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    if _HEX8.match(text):
        return Tag(int(text, 16))
    tag = tag_for_keyword(text)
    if tag is None:
        raise TagAddressError(f"unknown DICOM keyword or tag address: {address!r}")
    return Tag(tag)


def describe(tag: BaseTag) -> str:
    """``(0010,0020) PatientID`` for messages and records."""
    keyword = keyword_for_tag(tag)
    return f"({tag.group:04X},{tag.element:04X})" + (f" {keyword}" if keyword else "")


def dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
