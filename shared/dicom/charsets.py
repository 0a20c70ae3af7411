"""Character sets of text values: can the dataset hold a value, and converting it to UTF-8.

PS3.5 section 6.1: the text of the VRs SH, LO, ST, LT, PN, UC and UT is encoded in the
character set named by Specific Character Set (0008,0005); without it, only the default
repertoire ISO-IR 6 (ASCII, PS3.5 6.1.2.1) may be used. A sequence item may declare its
own Specific Character Set, otherwise it inherits its parent's (PS3.5 section 7.5.3).
Code extensions (ISO 2022, PS3.5 6.1.2.5) switch between the listed character sets
within one value.

pydicom writes a character its encodings cannot hold as ``?`` (with a warning), and it
reads and writes the default repertoire as Latin-1, so neither its writer nor its
reader says whether a value fits. :func:`fits` answers that with pydicom's own codecs
(``convert_encodings`` and its encoders for the Japanese sets) but the default
repertoire taken as ASCII. :func:`convert_to_utf8` re-declares a dataset as
ISO_IR 192 after decoding every text element in the character set it was read in, so
that pydicom's writer encodes all of them as UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.charset import convert_encodings, custom_encoders, default_encoding, python_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import CUSTOMIZABLE_CHARSET_VR

from shared.dicom.tags import tag_label
from shared.errors import Unprocessable

__all__ = ["UTF8", "SPECIFIC_CHARACTER_SET", "declared", "joined", "known", "fits", "element_fits", "encodings_for",
           "charsets_in_effect", "text_values", "convert_to_utf8", "TEXT_VRS"]

UTF8 = "ISO_IR 192"
SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
# VRs whose values are encoded in the Specific Character Set (PS3.5 6.1.2.3)
TEXT_VRS = frozenset(CUSTOMIZABLE_CHARSET_VR)
_PIXEL_DATA_GROUP = 0x7FE0
# what pydicom's decoder puts in place of bytes the declared character set cannot read
_REPLACEMENT = "\ufffd"


def declared(ds: Dataset) -> tuple[str, ...]:
    """The defined terms of ``ds``'s own (0008,0005) (empty when absent or empty)."""
    elem = ds.get(SPECIFIC_CHARACTER_SET)
    if elem is None or elem.value in (None, ""):
        return ()
    value = elem.value
    terms = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return tuple("" if term is None else str(term).strip() for term in terms)


def joined(terms: tuple[str, ...]) -> str:
    """The terms as the element's value reads (``ISO 2022 IR 13\\ISO 2022 IR 87``)."""
    return "\\".join(terms)


def known(terms: tuple[str, ...]) -> bool:
    """Whether pydicom has a codec for every term (the first may be empty: ISO-IR 6)."""
    return all(term in python_encoding for term in terms)


def encodings_for(terms: tuple[str, ...]) -> list[str]:
    """pydicom's Python codecs for ``terms``, with the default repertoire (no term,
    ``ISO_IR 6``, ``ISO 2022 IR 6``) as ASCII rather than pydicom's Latin-1."""
    python = convert_encodings(list(terms) or None)
    return ["ascii" if encoding == default_encoding else encoding for encoding in python]


def _encodes(text: str, encoding: str) -> bool:
    # the encoder pydicom's writer uses for this codec (charset._encode_string_impl)
    encoder = custom_encoders.get(encoding)
    try:
        if encoder is not None:
            encoder(text, errors="strict")
        else:
            text.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


def fits(text: str, encodings: list[str]) -> bool:
    """Whether pydicom can encode ``text`` in ``encodings`` without replacing a
    character: in one of them, or (code extensions, PS3.5 6.1.2.5) with every
    character in one of them, as pydicom then switches per run of characters."""
    if not text:
        return True
    if any(_encodes(text, encoding) for encoding in encodings):
        return True
    return len(encodings) > 1 and all(any(_encodes(ch, encoding) for encoding in encodings) for ch in text)


def text_values(elem: DataElement) -> Iterator[str]:
    """Each value of a text element as a string (a PN with all its component groups)."""
    value = elem.value
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    for one in values:
        if one is None:
            continue
        yield one.decode("latin-1") if isinstance(one, bytes) else str(one)


def element_fits(elem: DataElement, terms: tuple[str, ...]) -> bool:
    """Whether the text of ``elem`` (every item of a sequence, an item's own (0008,0005)
    overriding ``terms``) can be encoded without replacing a character."""
    if elem.VR == "SQ":
        for item in elem.value or ():
            inner = declared(item) or terms
            for tag in item.keys():
                inner_elem = item.get_item(tag)
                if isinstance(inner_elem, DataElement) and not element_fits(inner_elem, inner):
                    return False
        return True
    if elem.VR not in TEXT_VRS:
        return True
    encodings = encodings_for(terms)
    return all(fits(text, encodings) for text in text_values(elem))


def charsets_in_effect(ds: Dataset, terms: tuple[str, ...] | None = None,
                       found: dict[int, tuple[str, ...]] | None = None) -> dict[int, tuple[str, ...]]:
    """``id(dataset) -> terms in effect`` for ``ds`` and every item of the sequences
    already converted by pydicom (those an action can have written into; raw ones are
    the source's bytes), an item's own (0008,0005) overriding its parent's (PS3.5 7.5.3)."""
    found = {} if found is None else found
    own = declared(ds)
    terms = own if own or terms is None else terms
    found[id(ds)] = terms
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if isinstance(elem, DataElement) and elem.VR == "SQ":
            for item in elem.value or ():
                charsets_in_effect(item, terms, found)
    return found


def _decode_all(ds: Dataset, prefix: str, undecodable: list[str]) -> list[tuple[str, Dataset]]:
    """Convert every text and sequence element of ``ds`` (items included) from the
    bytes pydicom read, in the character set it read them in; return the items that
    declare their own (0008,0005), with their labels. Labels of values that did not
    decode go to ``undecodable``."""
    declaring: list[tuple[str, Dataset]] = []
    for tag in list(ds.keys()):
        if tag.group == _PIXEL_DATA_GROUP or tag == SPECIFIC_CHARACTER_SET:
            continue
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.VR not in TEXT_VRS:
            continue  # a deferred large binary value: no text, left in the source bytes
        if isinstance(raw, RawDataElement) and raw.VR is not None and raw.VR not in TEXT_VRS and raw.VR != "SQ":
            continue  # binary or default-repertoire VR (explicit VR): nothing to convert
        elem = ds[tag]  # pydicom decodes with the character set the dataset was read in
        label = prefix + tag_label(tag)
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value or ()):
                if declared(item):
                    declaring.append((f"{label}[{index}].", item))
                declaring.extend(_decode_all(item, f"{label}[{index}].", undecodable))
        elif elem.VR in TEXT_VRS and any(_REPLACEMENT in text for text in text_values(elem)):
            undecodable.append(label)
    return declaring


def convert_to_utf8(ds: Dataset) -> list[tuple[str, str | None]]:
    """Declare ``ds`` ISO_IR 192 (UTF-8) with every text value kept (PS3.5 6.1.2.3).

    Every text element, in every sequence item, is decoded in the character set it was
    read in (pydicom remembers it); then (0008,0005) becomes ISO_IR 192 at the top
    level and in every item that declared its own, so pydicom's writer encodes every
    text element as UTF-8 (and writes the whole dataset, not a splice). Elements of
    other VRs, private ones with VR UN included, keep their bytes. Returns each
    (0008,0005) changed: ``(label, value before)`` (None: absent).

    Raises :class:`Unprocessable` naming the element, not the value, when a text value
    is not valid in the character set it was declared in (its characters are unknown,
    so re-encoding would mangle it) or the declared character set is unknown to pydicom;
    (0008,0005) is then left as it was."""
    terms = declared(ds)
    if not known(terms):
        raise Unprocessable(f"its Specific Character Set {joined(terms)!r} is not one pydicom can decode")
    undecodable: list[str] = []
    declaring = _decode_all(ds, "", undecodable)
    for label, item in declaring:
        if not known(declared(item)):
            undecodable.append(f"{label}SpecificCharacterSet (not a character set pydicom can decode)")
    if undecodable:
        raise Unprocessable(f"{', '.join(undecodable[:5])} "
                            f"{'holds' if len(undecodable) == 1 else 'hold'} bytes not valid in the declared "
                            f"Specific Character Set")
    changed: list[tuple[str, str | None]] = []
    for label, dataset in [("", ds), *declaring]:
        if declared(dataset) != (UTF8,):
            changed.append((f"{label}SpecificCharacterSet", joined(declared(dataset)) or None))
            dataset.SpecificCharacterSet = UTF8
    return changed
