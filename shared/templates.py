"""Value templates: ``{PatientID}-{AccessionNumber}``, ``{PatientName|upper}``.

A field is any tag address (see shared.dicom.tags); ``|upper`` and ``|lower`` change
case; ``{{`` and ``}}`` are literal braces. A field whose element is absent or empty
renders as an empty string."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from shared.dicom.tags import TagAddressError, parse_path

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}|]+)(?:\|(upper|lower))?\}|\{[^{}]*\}?|\}")
FILTERS: dict[str, Callable[[str], str]] = {"upper": str.upper, "lower": str.lower}


@lru_cache(maxsize=1024)
def parse_template(template: str) -> tuple[tuple[str, str | None, str | None], ...]:
    """Split into (literal, field address or None, filter or None) parts."""
    parts, pos = [], 0
    for m in _TOKEN.finditer(template):
        literal = template[pos:m.start()]
        token = m.group(0)
        pos = m.end()
        if token in ("{{", "}}"):
            parts.append((literal + token[0], None, None))
        elif m.group(1):
            address = m.group(1).strip()
            try:
                parse_path(address)
            except TagAddressError as exc:
                raise ValueError(f"template field {{{address}}}: {exc}") from None
            parts.append((literal, address, m.group(2)))
        else:
            raise ValueError(f"template {template!r}: unbalanced or malformed field {token!r}")
    parts.append((template[pos:], None, None))
    return tuple(parts)


def check_template(template: str) -> str:
    parse_template(template)
    return template


def has_fields(template: str) -> bool:
    return any(address for _, address, _ in parse_template(template))


def render(template: str, lookup: Callable[[str], str]) -> str:
    """Fill fields with ``lookup(address)`` (the element's value as text)."""
    out = []
    for literal, address, filt in parse_template(template):
        out.append(literal)
        if address:
            value = lookup(address)
            out.append(FILTERS[filt](value) if filt else value)
    return "".join(out)
