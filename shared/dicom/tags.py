"""Tag addresses as written in config, resolved against datasets.

Forms (PS3.5 section 7.1 for group/element; section 7.8 for private blocks):

- a dictionary keyword: ``PatientID``
- ``(0010,0020)`` or ``00100020``
- a private tag by creator: ``(0019,"SIEMENS MR HEADER",08)`` — group, Private Creator
  value, and the element's low byte within the creator's block
- sequence paths: ``ReferencedStudySequence[0].ReferencedSOPInstanceUID``; ``[*]`` (or no
  index) stands for every item when reading; when writing, a missing index means item 0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from pydicom.datadict import dictionary_VR, keyword_for_tag, private_dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

ALL = "*"


class TagAddressError(ValueError):
    """A tag address that names no attribute or does not parse."""


@dataclass(frozen=True)
class Step:
    tag: int | None = None  # a standard (or fixed private) tag
    private: tuple[int, str, int] | None = None  # (group, creator, element offset)
    index: int | str | None = None  # item number, ALL, or None

    def label(self) -> str:
        if self.private:
            group, creator, offset = self.private
            base = f'({group:04X},"{creator}",{offset:02X})'
        else:
            base = tag_label(Tag(self.tag))
        return base if self.index is None else f"{base}[{self.index}]"


@dataclass(frozen=True)
class TagPath:
    steps: tuple[Step, ...]

    def __str__(self) -> str:
        return ".".join(s.label() for s in self.steps)

    @property
    def leaf(self) -> Step:
        return self.steps[-1]

    def dictionary_vr(self, tag: int | None = None) -> str | None:
        """The leaf's VR from the data dictionary (PS3.6): a standard leaf's, or a
        private leaf's from the private dictionary by its creator once its concrete
        ``tag`` in a dataset is known (PS3.5 7.8.1); None when unknown."""
        leaf = self.leaf
        if leaf.private is not None:
            return None if tag is None else dictionary_vr(tag, leaf.private[1])
        return dictionary_vr(leaf.tag)


def tag_label(tag: BaseTag) -> str:
    """A tag for messages and change lists: its keyword, else ``(gggg,eeee)`` (always
    for a private tag, whose keyword depends on its creator)."""
    return ("" if tag.is_private else keyword_for_tag(tag)) or f"({tag.group:04X},{tag.element:04X})"


def dictionary_vr(tag: int, creator: str | None = None) -> str | None:
    """The VR of ``tag`` in the data dictionary (PS3.6), or in the private dictionary
    for the Private Creator ``creator``; None when unknown."""
    try:
        return private_dictionary_VR(tag, creator) if creator is not None else dictionary_VR(tag)
    except KeyError:
        return None


_STEP = re.compile(
    r"""\s*(?:
        \(\s*(?P<pgroup>[0-9A-Fa-f]{4})\s*,\s*"(?P<creator>[^"]+)"\s*,\s*(?P<poff>[0-9A-Fa-f]{2})\s*\)
      | \(\s*(?P<group>[0-9A-Fa-f]{4})\s*,\s*(?P<elem>[0-9A-Fa-f]{4})\s*\)
      | (?P<hex8>[0-9A-Fa-f]{8})(?![A-Za-z0-9])
      | (?P<keyword>[A-Za-z][A-Za-z0-9]*)
    )\s*(?:\[\s*(?P<index>\d+|\*)\s*\])?\s*""",
    re.VERBOSE,
)


def _parse_step(text: str, whole: str) -> Step:
    m = _STEP.fullmatch(text)
    if not m:
        raise TagAddressError(f"cannot read tag address {whole!r} at {text!r}")
    index = m.group("index")
    index = None if index is None else (ALL if index == ALL else int(index))
    if m.group("pgroup"):
        group = int(m.group("pgroup"), 16)
        if group % 2 == 0:
            raise TagAddressError(f"{whole!r}: private tags have an odd group, not {group:04X}")
        return Step(private=(group, m.group("creator"), int(m.group("poff"), 16)), index=index)
    if m.group("group"):
        return Step(tag=int(m.group("group") + m.group("elem"), 16), index=index)
    if m.group("hex8"):
        return Step(tag=int(m.group("hex8"), 16), index=index)
    tag = tag_for_keyword(m.group("keyword"))
    if tag is None:
        raise TagAddressError(f"unknown DICOM keyword {m.group('keyword')!r} in tag address {whole!r}")
    return Step(tag=tag, index=index)


def _split(text: str) -> list[str]:
    """Split on dots outside parentheses and quotes (creators may contain dots)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif ch == "." and depth == 0 and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


_CACHE: dict[str, TagPath] = {}


def parse_path(text: str) -> TagPath:
    """Parse a tag address; raises :class:`TagAddressError` naming what is wrong."""
    cached = _CACHE.get(text)
    if cached is not None:
        return cached
    if not text or not text.strip():
        raise TagAddressError("empty tag address")
    steps = tuple(_parse_step(part, text) for part in _split(text))
    for step in steps[:-1]:
        if step.tag is not None:
            vr = dictionary_vr(step.tag)
            if vr not in (None, "SQ"):
                raise TagAddressError(f"{text!r}: {step.label()} is not a sequence")
    if steps[-1].index is not None:
        raise TagAddressError(f"{text!r}: an item index needs an attribute after it")
    path = TagPath(steps)
    _CACHE[text] = path
    return path


# --- resolving against a dataset --------------------------------------------------------


def step_tag(ds: Dataset, step: Step, *, create: bool = False) -> BaseTag | None:
    """The tag ``step`` names in ``ds``: a private step's by its creator's block (PS3.5
    7.8.1), made with ``create``; None for a private block that is not there."""
    if step.private is None:
        return Tag(step.tag)
    group, creator, offset = step.private
    try:
        return ds.private_block(group, creator, create=create).get_tag(offset)
    except KeyError:
        return None


def _items(ds: Dataset, step: Step, create: bool) -> Iterator[Dataset]:
    tag = step_tag(ds, step, create=create)
    if tag is None:
        return
    if tag not in ds:
        if not create:
            return
        ds.add_new(tag, "SQ", Sequence())
    seq = ds[tag].value
    if seq is None or isinstance(seq, (str, bytes)):
        return
    if step.index is ALL or (step.index is None and not create):
        yield from list(seq)
        return
    index = step.index or 0
    if index >= len(seq):
        if not create:
            return
        while len(seq) <= index:
            seq.append(Dataset())
    yield seq[index]


def locate(ds: Dataset, path: TagPath, *, create: bool = False) -> list[tuple[Dataset, BaseTag]]:
    """(containing dataset, tag) for every place ``path`` names. Without ``create`` only
    existing elements are returned; with it, missing sequences, items and private
    creator blocks on the way are made, and the leaf places are returned even when the
    leaf element does not exist yet."""
    parents = [ds]
    for step in path.steps[:-1]:
        parents = [item for parent in parents for item in _items(parent, step, create)]
    places = []
    for parent in parents:
        tag = step_tag(parent, path.leaf, create=create)
        if tag is not None and (create or tag in parent):
            places.append((parent, tag))
    return places


def creator_tag(ds: Dataset, step: Step) -> BaseTag | None:
    """The Private Creator element of a private ``step``'s block in ``ds`` (PS3.5
    7.8.1), or None when ``ds`` has no block for that creator."""
    group, creator, _ = step.private
    try:
        block = ds.private_block(group, creator)
    except KeyError:
        return None
    return Tag(group, block.block_start >> 8)


def item_prefix(ds: Dataset, path: TagPath, item: Dataset) -> str:
    """``Seq[i].Inner[j].``: the concrete address of ``item``, one of the items ``path``
    reaches in ``ds`` before its leaf ('' when it is not one of them)."""
    level: list[tuple[Dataset, str]] = [(ds, "")]
    last = len(path.steps) - 2
    for depth, step in enumerate(path.steps[:-1]):
        nxt = []
        label = Step(tag=step.tag, private=step.private).label()
        for parent, prefix in level:
            tag = step_tag(parent, step)
            if tag is None or tag not in parent:
                continue
            for i, inner in enumerate(parent[tag].value or []):
                if isinstance(step.index, int) and i != step.index:
                    continue
                if depth == last and inner is item:
                    return f"{prefix}{label}[{i}]."
                nxt.append((inner, f"{prefix}{label}[{i}]."))
        level = nxt
    return ""


def private_elements(seq_elem: DataElement, prefix: str) -> list[tuple[Dataset, BaseTag, str]]:
    """(item, tag, concrete address) of every private element in the items of the
    sequence ``seq_elem`` (addressed ``prefix``), at every nesting level."""
    found = []
    for i, item in enumerate(seq_elem.value or []):
        for tag in list(item.keys()):
            label = f"{prefix}[{i}].{tag_label(tag)}"
            if tag.is_private:
                found.append((item, tag, label))
            elif item[tag].VR == "SQ":
                found.extend(private_elements(item[tag], label))
    return found
