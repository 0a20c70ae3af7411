"""Value templates: ``{PatientID}-{AccessionNumber}``, ``{PatientName|upper}``.

A field is any tag address (see shared.dicom.tags); ``|upper`` and ``|lower`` change
case; ``{{`` and ``}}`` are literal braces. A field whose element is absent or empty
renders as an empty string.

Name templates (a destination's ``name_template``) render a relative path with
:func:`render_name`, which refuses any name that could leave the destination's root
whatever the tag values are."""

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


# --- names: relative paths and object names ---------------------------------------------

# A path component: NAME_MAX on Linux and most filesystems, in bytes.
NAME_MAX_BYTES = 255
# A whole name: the limit of a GCS object name (UTF-8 bytes), far under PATH_MAX.
NAME_TOTAL_MAX_BYTES = 1024


class UnsafeName(ValueError):
    """A name template cannot name this instance safely. The message says which
    fields and why, never their values (they may be patient data)."""


def _subject(addresses: list[str]) -> str:
    """What made a path component: "PatientID", or "the path component made of A and B"."""
    unique = list(dict.fromkeys(addresses))
    return unique[0] if len(unique) == 1 else f"the path component made of {' and '.join(unique)}"


def _component_problem(component: str) -> str | None:
    if component in (".", ".."):
        return "is '.' or '..' (the destination folder or the one above it)"
    if not component:
        return "is empty"
    if "\0" in component:
        return "contains a NUL character"
    if "\\" in component:
        return "contains a path separator"
    size = len(component.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX_BYTES:
        return f"is {size} bytes long, over the file name limit of {NAME_MAX_BYTES}"
    return None


def check_name_template(template: str) -> str:
    """Refuse a name template whose own text leaves the destination's root (absolute,
    '.' or '..' components, empty components, a NUL), before any value is put in."""
    parse_template(template)
    literal_only = render(template, lambda address: "x")
    if literal_only.startswith("/"):
        raise ValueError(f"name template {template!r} is an absolute path: names are relative to the destination")
    for component in literal_only.split("/"):
        why = _component_problem(component)
        if why:
            raise ValueError(f"name template {template!r}: a path component {why}")
    return template


def render_name(template: str, lookup: Callable[[str], str]) -> str:
    """Render a name template as a relative path that stays inside its root: every
    '/'-separated component is checked after the values are put in. A component that
    is '.' or '..', empty, over :data:`NAME_MAX_BYTES`, or holds a separator or NUL, or
    a name over :data:`NAME_TOTAL_MAX_BYTES`, raises :class:`UnsafeName` naming the
    fields that made it (the template's own text is checked by
    :func:`check_name_template` when the config is loaded)."""
    components: list[tuple[str, list[str]]] = [("", [])]
    for literal, address, filt in parse_template(template):
        pieces = literal.split("/")
        text, fields = components[-1]
        components[-1] = (text + pieces[0], fields)
        components.extend((piece, []) for piece in pieces[1:])
        if address:
            value = lookup(address)
            value = FILTERS[filt](value) if filt else value
            text, fields = components[-1]
            if "/" in value:
                raise UnsafeName(f"{address} contains a path separator")
            components[-1] = (text + value, fields + [address])
    if not components[0][0] and not components[0][1] and len(components) > 1:
        raise UnsafeName(f"name template {template!r} is an absolute path")
    for text, fields in components:
        why = _component_problem(text)
        if why:
            raise UnsafeName(f"{_subject(fields)} {why}" if fields else f"name template {template!r}: a path component {why}")
    name = "/".join(text for text, _ in components)
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > NAME_TOTAL_MAX_BYTES:
        raise UnsafeName(f"the name is {size} bytes long, over the limit of {NAME_TOTAL_MAX_BYTES}")
    return name
