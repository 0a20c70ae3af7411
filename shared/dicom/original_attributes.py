"""Original Attributes Sequence (0400,0561): the record of what a morph pass changed.

PS3.3 section C.12.1.1.9 and Table C.12-1 (SOP Common Module). Each item of the
Original Attributes Sequence (0400,0561) describes one modification of the instance:

=====================================  ===========  ====  ==================================
Attribute                              Tag          Type  Here
=====================================  ===========  ====  ==================================
Source of Previous Values              (0400,0564)  2     ``policy.source_of_previous_values``
                                                          (zero length when unknown)
Attribute Modification DateTime        (0400,0562)  1     ``policy.modified_at`` (DT)
Modifying System                       (0400,0563)  1     ``policy.modifying_system`` (LO)
Reason for the Attribute Modification  (0400,0565)  1     COERCE or CORRECT (defined terms)
Modified Attributes Sequence           (0400,0550)  1     exactly one item (the standard:
                                                          "Only a single Item shall be
                                                          included in this Sequence")
>Any Attribute from the main data set  -            -     the original top-level elements
 that was modified or removed
=====================================  ===========  ====  ==================================

One item is appended per morph pass that changed anything (existing items are kept).
What goes into the Modified Attributes Sequence item:

- every top-level element the pass modified or removed, as it was before the pass; a
  change anywhere inside a sequence records the whole original top-level sequence
  element (the standard records "Sequence Attributes and their Items");
- an element the pass inserted (absent before) is recorded with zero length, so that
  the item says the attribute was not there (an empty value is what a reader restoring
  the originals would write back; the table entry only lists "modified or removed",
  and a zero-length element is the one encoding of "absent" it can hold);
- a private data element always with its Private Creator element (PS3.5 section 7.8.1:
  a private element is only identified by the creator that reserved its block), as it
  was before the pass, or as it is now when the block is new;
- never the Original Attributes Sequence itself, and never file meta (group 0002).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

ORIGINAL_ATTRIBUTES_SEQUENCE = Tag(0x0400, 0x0561)
MODIFIED_ATTRIBUTES_SEQUENCE = Tag(0x0400, 0x0550)
ATTRIBUTE_MODIFICATION_DATETIME = Tag(0x0400, 0x0562)
MODIFYING_SYSTEM = Tag(0x0400, 0x0563)
SOURCE_OF_PREVIOUS_VALUES = Tag(0x0400, 0x0564)
REASON_FOR_THE_ATTRIBUTE_MODIFICATION = Tag(0x0400, 0x0565)

Reason = Literal["COERCE", "CORRECT"]


def format_dt(moment: datetime) -> str:
    """A DT value (PS3.5 section 6.2): ``YYYYMMDDHHMMSS.FFFFFF`` plus ``&ZZXX`` when
    the datetime carries a UTC offset."""
    text = moment.strftime("%Y%m%d%H%M%S.%f")
    offset = moment.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        minutes = abs(minutes)
        text += f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    return text


@dataclass(frozen=True)
class OriginalAttributesPolicy:
    """How a morph pass records Original Attributes. Pass one to
    :func:`shared.morph.apply_actions` to record, None not to.

    ``modified_at`` is given by the caller (the stage uses the instance's received time)
    so that re-running the same pass over the same input writes the same bytes."""

    modifying_system: str
    modified_at: datetime
    reason: Reason = "COERCE"
    source_of_previous_values: str = ""

    def __post_init__(self):
        if self.reason not in ("COERCE", "CORRECT"):
            raise ValueError(f"reason must be COERCE or CORRECT, not {self.reason!r}")
        if not self.modifying_system or len(self.modifying_system) > 64:
            raise ValueError("modifying_system must be 1 to 64 characters (VR LO)")



_ABSENT = object()


class OriginalsRecorder:
    """Collects the original top-level elements of one pass, before they change.

    Call :meth:`save` with the top-level tag *before* every mutation at or below it;
    only the first call per tag copies (deep, so later in-place changes to a sequence
    do not reach the record). :meth:`append_item` writes the item at the end."""

    def __init__(self, ds: Dataset):
        self._ds = ds
        self._saved: dict[BaseTag, object] = {}
        self._touched: set[BaseTag] = set()

    def save(self, tag: int) -> None:
        tag = Tag(tag)
        if tag in self._saved or tag == ORIGINAL_ATTRIBUTES_SEQUENCE or tag.group == 0x0002:
            return
        self._saved[tag] = copy.deepcopy(self._ds[tag]) if tag in self._ds else _ABSENT

    def save_absent(self, tag: int) -> None:
        """For an element known to have been absent before the pass (a new private
        creator block is only resolvable after it is made)."""
        tag = Tag(tag)
        if tag not in self._saved and tag != ORIGINAL_ATTRIBUTES_SEQUENCE:
            self._saved[tag] = _ABSENT

    def touch(self, tag: int) -> None:
        """Mark the top-level element as changed by the pass (after :meth:`save`)."""
        tag = Tag(tag)
        if tag in self._saved:
            self._touched.add(tag)

    @property
    def tags(self) -> list[BaseTag]:
        """The top-level tags the pass changed."""
        return sorted(self._touched)

    def modified_item(self) -> Dataset:
        """The single item of the Modified Attributes Sequence (0400,0550)."""
        item = Dataset()
        for tag in sorted(self._touched):
            original = self._saved[tag]
            if original is _ABSENT:
                if tag not in self._ds:
                    continue  # inserted and removed again within the pass: nothing changed
                item.add(DataElement(tag, self._ds[tag].VR, None))  # zero length: was absent
            else:
                item.add(original)
        for tag in [t for t in item.keys() if t.is_private and t.element >= 0x1000]:
            creator = self._creator_of(tag)
            if creator is not None:
                item[creator.tag] = creator
        return item

    def _creator_of(self, tag: BaseTag) -> DataElement | None:
        """The Private Creator element (gggg,00xx) reserving ``tag``'s block (PS3.5
        7.8.1): as saved before the pass if it had a value, else as it is now."""
        creator_tag = Tag(tag.group, tag.element >> 8)
        saved = self._saved.get(creator_tag, _ABSENT)
        if saved is not _ABSENT and not saved.is_empty:
            return saved
        if creator_tag in self._ds and not self._ds[creator_tag].is_empty:
            return copy.deepcopy(self._ds[creator_tag])
        return None

    def append_item(self, policy: OriginalAttributesPolicy) -> Dataset | None:
        """Append one Original Attributes item to the dataset (PS3.3 C.12.1.1.9);
        None (and nothing appended) when nothing was recorded."""
        modified = self.modified_item()
        if not len(modified):
            return None
        item = Dataset()
        item.add_new(MODIFIED_ATTRIBUTES_SEQUENCE, "SQ", Sequence([modified]))
        item.add_new(ATTRIBUTE_MODIFICATION_DATETIME, "DT", format_dt(policy.modified_at))
        item.add_new(MODIFYING_SYSTEM, "LO", policy.modifying_system)
        item.add_new(SOURCE_OF_PREVIOUS_VALUES, "LO", policy.source_of_previous_values or None)
        item.add_new(REASON_FOR_THE_ATTRIBUTE_MODIFICATION, "CS", policy.reason)
        append_original_attributes_item(self._ds, item)
        return item


def append_original_attributes_item(ds: Dataset, item: Dataset) -> None:
    """Append ``item`` to (0400,0561), creating the sequence if needed; existing items
    are kept (each records an earlier modification)."""
    if ORIGINAL_ATTRIBUTES_SEQUENCE in ds and isinstance(ds[ORIGINAL_ATTRIBUTES_SEQUENCE].value, Sequence):
        ds[ORIGINAL_ATTRIBUTES_SEQUENCE].value.append(item)
    else:
        ds.add_new(ORIGINAL_ATTRIBUTES_SEQUENCE, "SQ", Sequence([item]))
