"""Tag morphing: apply a plan's actions to a dataset in place.

Actions (``shared.config``): ``set``, ``delete`` (a tag, ``private``, or a group),
``prepend``, ``suffix``, ``regex_replace``, ``copy``, ``move``, ``crosswalk`` and
``ai_standardize``. Tag addresses are resolved with :func:`shared.dicom.tags.locate`:
reading takes every matching place (``[*]`` for every item), writing creates missing
sequences, items and private creator blocks on the way.

- **VR** of a written element: the element's existing VR (unless UN), else the action's
  ``vr``, else the data dictionary's (PS3.6; the private dictionary for a private tag by
  creator). None known is an error that asks for ``vr``. Values are converted from text
  and checked against the VR (PS3.5 section 6.2) before they are written; a bad value
  raises :class:`shared.errors.Unprocessable` naming the action and tag.
- **Templates** (``{PatientID}-{AccessionNumber}``, ``{PatientName|upper}``) are filled
  from the dataset *as received*: every field is looked up once, before the first action
  of the pass, so an earlier action cannot change what a later template sees.
- **Multi-valued** elements: ``prepend``, ``suffix`` and ``regex_replace`` apply to each
  value; ``crosswalk`` and ``ai_standardize`` see the whole value (backslash-joined).
- **Pixel Data** is never read, decoded or written: no action may name group 7FE0 or the
  file meta group 0002 (config refuses it; this module checks again).
- **Character set** (PS3.5 6.1): every text value the pass wrote must be representable
  in the Specific Character Set in effect where it was written (no (0008,0005): ASCII).
  When one is not, the whole dataset is converted to ISO_IR 192 (UTF-8) at the end of
  the pass (:func:`shared.dicom.charsets.convert_to_utf8`; every text element keeps its
  characters) and the change of (0008,0005) is listed and recorded like any other. When
  the conversion cannot apply (existing text not valid in its declared character set,
  or a character set pydicom does not know), the pass raises
  :class:`shared.errors.Unprocessable` naming the element: a value is never written as
  ``?``.
- **Modules brought in** (PS3.3): an inserted attribute of a module the instance did not
  have (Institution Name without General Equipment) brings the module's Type 2
  attributes, added empty and listed as changes (:mod:`shared.dicom.modules`).
- **Original Attributes** (PS3.3 C.12.1.1.9): with a policy, one item is appended to the
  Original Attributes Sequence per pass that changed anything (see
  :mod:`shared.dicom.original_attributes`).

No value of the dataset ever goes into an exception message (a Patient ID is PHI); only
configured literal values, tag names and VRs do.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from pydantic import TypeAdapter, ValidationError
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from shared.config import (
    Action,
    AIStandardizeAction,
    ConfigError,
    CopyAction,
    CrosswalkAction,
    DeleteAction,
    MoveAction,
    PrependAction,
    RegexReplaceAction,
    SetAction,
    SuffixAction,
)
from shared.dicom.charsets import (
    SPECIFIC_CHARACTER_SET,
    UTF8,
    charsets_in_effect,
    convert_to_utf8,
    declared,
    element_fits,
    joined,
)
from shared.dicom.modules import missing_type2
from shared.dicom.original_attributes import (
    ORIGINAL_ATTRIBUTES_SEQUENCE,
    OriginalAttributesPolicy,
    OriginalsRecorder,
)
from shared.dicom.tags import (
    Step,
    TagPath,
    creator_tag,
    item_prefix,
    locate,
    parse_path,
    private_elements,
    step_tag,
    tag_label,
)
from shared.dicom.values import check_value_for_vr, to_element_value
from shared.errors import Held, LookupFailed, Unprocessable
from shared.morph_services import MorphServices
from shared.regex import compile_regex
from shared.templates import has_fields, parse_template, render

__all__ = ["ACTIONS", "Change", "apply_actions", "validate_actions", "MorphServices", "OriginalAttributesPolicy"]

_ACTIONS = TypeAdapter(list[Action])

# VRs whose values are not text: never converted to or from text here.
_BINARY = frozenset({"OB", "OW", "OL", "OV", "OF", "OD", "UN", "SQ"})
_PROTECTED_GROUPS = (0x0002, 0x7FE0)


@dataclass(frozen=True)
class Change:
    """One element changed by one action, for the dry-run diff.

    ``path`` is the concrete place (``BeamSequence[1].BeamName``); ``old``/``new`` are
    the values as text (``None``: absent before / removed; sequences and binary values
    are summarized, never dumped)."""

    index: int
    action: str
    path: str
    old: str | None
    new: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.index} {self.action}] {self.path}: {self.old!r} -> {self.new!r}"


def validate_actions(actions: Iterable[dict[str, Any]]) -> list:
    """The action models for ``actions`` (JSON dicts as carried in a Plan); a list that
    does not validate raises :class:`shared.config.ConfigError` naming the field.
    Plans repeat the same few action lists, so validated lists are cached by content."""
    actions = list(actions)
    key = json.dumps(actions, sort_keys=True, default=str)
    models = _VALIDATED.get(key)
    if models is None:
        try:
            models = _ACTIONS.validate_python(actions)
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, actions, prefix="actions") from None
        if len(_VALIDATED) > 512:
            _VALIDATED.clear()
        _VALIDATED[key] = models
    return models


_VALIDATED: dict[str, list] = {}


def apply_actions(ds: Dataset, actions: list[dict[str, Any]], services: MorphServices | None = None, *,
                  original_attributes: OriginalAttributesPolicy | None = None) -> list[Change]:
    """Apply ``actions`` to ``ds`` in order, in place; return every change made.

    ``services`` supplies crosswalk tables and the standardizer (default: empty tables,
    the fake standardizer). With ``original_attributes``, a pass that changed anything
    appends one item to the Original Attributes Sequence (0400,0561).

    Raises :class:`shared.errors.Unprocessable` (naming action and tag) when a value is
    not valid for its VR or no VR is known; :class:`shared.errors.LookupFailed` or
    :class:`shared.errors.Held` when a crosswalk has no entry and its policy says so;
    :class:`shared.config.ConfigError` when the actions do not validate.
    The dataset may be partly changed when an exception is raised."""
    models = validate_actions(actions)
    run = _Pass(ds, services or MorphServices(), original_attributes)
    run.snapshot_templates(models)
    for index, action in enumerate(models):
        run.apply(index, action)
    run.complete_modules()
    run.settle_character_set()
    if original_attributes is not None and run.changes:
        run.recorder.append_item(original_attributes)
    return run.changes


# --- element values as text -------------------------------------------------------------


def _scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, BaseTag):
        return f"0x{int(value):08X}"
    if isinstance(value, bytes):
        return ""
    return str(value)


def _text(elem: DataElement) -> str:
    """The element's value as DICOM text: multiple values joined by backslashes; ''
    for empty, sequence and binary elements."""
    if elem.VR in _BINARY:
        return ""
    value = elem.value
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_scalar_text(v) for v in value)
    return _scalar_text(value)


def _values(elem: DataElement) -> list[str]:
    """Each value as text (one empty string for an empty element)."""
    value = elem.value
    if isinstance(value, (list, tuple, MultiValue)):
        return [_scalar_text(v) for v in value] or [""]
    return [_scalar_text(value)]


def _show(elem: DataElement | None) -> str | None:
    """A value for the change list: text, or a summary of a sequence / binary value."""
    if elem is None:
        return None
    if elem.VR == "SQ":
        return f"<sequence of {len(elem.value or [])} item(s)>"
    if elem.VR in _BINARY:
        return f"<{elem.VR}, {len(elem.value or b'')} bytes>"
    return _text(elem)


# --- one pass ---------------------------------------------------------------------------


class _Place:
    __slots__ = ("parent", "tag", "top")

    def __init__(self, parent: Dataset, tag: BaseTag, top: BaseTag):
        self.parent, self.tag, self.top = parent, tag, top


class _Pass:
    def __init__(self, ds: Dataset, services: MorphServices, policy: OriginalAttributesPolicy | None):
        self.ds = ds
        self.services = services
        self.recorder = OriginalsRecorder(ds)
        self.recording = policy is not None
        self.changes: list[Change] = []
        # (parent, tag, label, action index, action name) of every element written
        self.written: list[tuple[Dataset, BaseTag, str, int, str]] = []
        # top-level tags the pass inserted (absent before) -> (action index, action name)
        self.inserted: dict[BaseTag, tuple[int, str]] = {}
        self.snapshot: dict[str, str] = {}
        # the action being applied, for messages
        self.index = 0
        self.name = ""
        self.where = ""

    # --- templates ------------------------------------------------------------------------

    def snapshot_templates(self, models: list) -> None:
        """Look every template field up before the pass (templates see the dataset as
        received)."""
        for action in models:
            if isinstance(action, (SetAction, PrependAction, SuffixAction)):
                for _, address, _ in parse_template(action.value):
                    if address and address not in self.snapshot:
                        places = locate(self.ds, parse_path(address))
                        self.snapshot[address] = _text(places[0][0][places[0][1]]) if places else ""

    def render(self, template: str) -> str:
        return render(template, lambda address: self.snapshot.get(address, ""))

    # --- messages -------------------------------------------------------------------------

    def fail(self, message: str) -> Unprocessable:
        return Unprocessable(f"action {self.index} ({self.name} {self.where}): {message}")

    def convert(self, vr: str, text: str, *, literal: bool) -> tuple[str, Any]:
        """(VR, element value) for ``text``, checked against the VR (PS3.5 6.2). A
        dictionary VR such as ``US or SS`` takes the first of its VRs the text is valid
        for. Only a literal configured value is quoted in a message; a value derived
        from the dataset is not (it may be PHI)."""
        first_error = None
        for option in vr.split(" or "):
            try:
                check_value_for_vr(option, text)
                return option, (to_element_value(option, text) if text != "" else None)
            except ValueError as exc:
                first_error = first_error or exc
        if literal:
            raise self.fail(str(first_error))
        raise self.fail(f"the resulting value ({len(text)} characters) is not valid for VR {vr}")

    # --- resolving places -----------------------------------------------------------------

    def check_protected(self, path: TagPath) -> None:
        for step in path.steps:
            if step.tag is not None and (step.tag >> 16) in _PROTECTED_GROUPS:
                raise self.fail(f"{step.label()} is file meta or pixel data and cannot be changed")

    def read_places(self, path: TagPath) -> list[_Place]:
        """Existing places of ``path``, with their top-level tag."""
        places = locate(self.ds, path)
        if len(path.steps) == 1:
            return [_Place(parent, tag, tag) for parent, tag in places]
        top = step_tag(self.ds, path.steps[0]) if places else None
        return [_Place(parent, tag, top) for parent, tag in places]

    def write_places(self, path: TagPath) -> list[_Place]:
        """Places for writing ``path``, created as needed. The top-level element is
        saved for Original Attributes before anything is created under it."""
        ds = self.ds
        first = path.steps[0]
        top_before = step_tag(ds, first)
        existed = top_before is not None and top_before in ds
        if self.recording and top_before is not None:
            self.recorder.save(top_before)
        creator_before = None
        if first.private is not None:
            creator_before = creator_tag(ds, first)
        places = locate(ds, path, create=True)
        top = top_before if top_before is not None else step_tag(ds, first)
        if not existed and top is not None and top in ds:
            self.inserted.setdefault(top, (self.index, self.name))
        if first.private is not None and creator_before is None and top is not None:
            creator = creator_tag(ds, first)
            if not places:  # nothing to write: undo the block we just made
                for tag in (top, creator):
                    if tag is not None and tag in ds:
                        del ds[tag]
                return []
            if self.recording:
                self.recorder.save_absent(creator)
                self.recorder.save_absent(top)
                self.recorder.touch(creator)
            self.changes.append(Change(self.index, self.name, tag_label(creator), None, _show(ds[creator])))
        elif not places and not existed and top is not None and top in ds:
            del ds[top]  # e.g. Seq[*].X with no Seq: do not leave an empty sequence behind
            return []
        return [_Place(parent, tag, top if len(path.steps) > 1 else tag) for parent, tag in places]

    def label(self, path: TagPath, place: _Place) -> str:
        """The concrete address of a place: item indices filled in."""
        leaf = Step(tag=path.leaf.tag, private=path.leaf.private).label()
        if len(path.steps) == 1:
            return leaf
        return item_prefix(self.ds, path, place.parent) + leaf

    # --- writing --------------------------------------------------------------------------

    def vr_for(self, place: _Place, path: TagPath, given: str | None, fallback: str | None = None) -> str:
        """Existing VR (unless UN), else the given VR, else the dictionary VR, else
        ``fallback`` (the source VR for copies)."""
        if place.tag in place.parent:
            vr = place.parent[place.tag].VR
            if vr and vr != "UN":
                return vr
        vr = given or path.dictionary_vr(place.tag) or fallback
        if not vr or vr == "UN":
            raise self.fail(f"no VR is known for {self.label(path, place)}: give one with 'vr'")
        return vr

    def write(self, place: _Place, path: TagPath, vr: str, value: Any) -> None:
        parent, tag = place.parent, place.tag
        old = parent[tag] if tag in parent else None
        new = DataElement(tag, vr, value)
        if old is not None and old.VR == vr and old.value == new.value:
            return
        if self.recording:
            self.recorder.save(place.top)
            self.recorder.touch(place.top)
        parent[tag] = new
        if old is None and parent is self.ds:
            self.inserted.setdefault(tag, (self.index, self.name))
        label = self.label(path, place)
        self.written.append((parent, tag, label, self.index, self.name))
        self.changes.append(Change(self.index, self.name, label, _show(old), _show(new)))

    def remove(self, place: _Place, label: str) -> None:
        parent, tag = place.parent, place.tag
        old = parent[tag]
        if self.recording:
            self.recorder.save(place.top)
            self.recorder.touch(place.top)
        del parent[tag]
        self.changes.append(Change(self.index, self.name, label, _show(old), None))

    # --- modules ----------------------------------------------------------------------------

    def complete_modules(self) -> None:
        """Add empty the Type 2 attributes of every module the pass brought in (PS3.3
        module tables, PS3.5 7.4.2), each listed as a change of the action that did."""
        if not self.inserted:
            return
        for module, tag in missing_type2(self.ds, self.inserted):
            index, name = min(self.inserted[t] for t in self.inserted if t in module.attributes)
            if self.recording:
                self.recorder.save(tag)
                self.recorder.touch(tag)
            self.ds[tag] = DataElement(tag, dictionary_VR(tag), None)
            self.changes.append(Change(index, name, tag_label(tag), None, ""))

    # --- character set --------------------------------------------------------------------

    def settle_character_set(self) -> None:
        """Make sure every value written fits the Specific Character Set in effect at
        its place (PS3.5 6.1, 7.5.3), converting the dataset to ISO_IR 192 when one does
        not; refuse (naming the element) when the conversion cannot apply."""
        in_effect: dict[int, tuple[str, ...]] | None = None
        top_terms = declared(self.ds) if self.written else ()
        misfit = None
        for parent, tag, label, index, name in self.written:
            elem = parent.get_item(tag) if tag in parent else None
            if not isinstance(elem, DataElement):
                continue  # removed again later in the pass
            if parent is self.ds:
                terms = top_terms
            else:
                if in_effect is None:
                    in_effect = charsets_in_effect(self.ds)
                terms = in_effect.get(id(parent), top_terms)
            if not element_fits(elem, terms):
                misfit = (label, index, name, terms)
                break
        if misfit is None:
            return
        label, index, name, terms = misfit
        if self.recording:
            self.recorder.save(SPECIFIC_CHARACTER_SET)
        charset = joined(terms) if terms else "the default repertoire (ISO-IR 6, no Specific Character Set)"
        try:
            redeclared = convert_to_utf8(self.ds)
        except Unprocessable as exc:
            raise Unprocessable(
                f"action {index} ({name} {label}): the new value has characters {charset} cannot hold, and the "
                f"instance cannot be converted to {UTF8} (UTF-8) without changing existing text: {exc}") from None
        for path, before in redeclared:
            # the top-level one is recorded: in the Modified Attributes item it declares
            # how the original values there are encoded (PS3.5 7.5.3); an item's own
            # changes only how its unchanged characters are encoded
            if self.recording and path == "SpecificCharacterSet":
                self.recorder.touch(SPECIFIC_CHARACTER_SET)
            self.changes.append(Change(index, name, path, before, UTF8))

    # --- actions --------------------------------------------------------------------------

    def apply(self, index: int, action) -> None:
        self.index, self.name = index, action.action
        if isinstance(action, (CopyAction, MoveAction)):
            self.where = f"{parse_path(action.from_)} -> {parse_path(action.to)}"
        elif isinstance(action, DeleteAction) and action.group is not None:
            self.where = f"group {action.group}"
        else:
            self.where = str(parse_path(action.tag))
        ACTIONS[action.action](self, action)

    def do_set(self, a: SetAction) -> None:
        path = parse_path(a.tag)
        self.check_protected(path)
        literal = not has_fields(a.value)
        text = a.value if literal else self.render(a.value)
        for place in self.write_places(path):
            vr = self.vr_for(place, path, a.vr)
            self.write(place, path, *self.convert(vr, text, literal=literal))

    def do_delete(self, a: DeleteAction) -> None:
        if a.group is None:
            path = parse_path(a.tag)
            self.check_protected(path)
            for place in self.read_places(path):
                self.remove(place, self.label(path, place))
        elif a.group == "private":
            self.delete_private()
        else:
            group = int(a.group, 16)
            if group in _PROTECTED_GROUPS:
                raise self.fail(f"group {a.group} is file meta or pixel data and cannot be deleted")
            for tag in [t for t in self.ds.keys() if t.group == group]:
                self.remove(_Place(self.ds, tag, tag), tag_label(tag))

    def delete_private(self) -> None:
        """Every private element (creators included) at every nesting level, as
        ``Dataset.remove_private_tags`` does; the Original Attributes Sequence is a
        record of earlier values and is left as it is."""
        ds = self.ds
        for tag in list(ds.keys()):
            if tag.is_private:
                self.remove(_Place(ds, tag, tag), tag_label(tag))
            elif tag != ORIGINAL_ATTRIBUTES_SEQUENCE and ds[tag].VR == "SQ":
                for parent, inner, label in private_elements(ds[tag], tag_label(tag)):
                    self.remove(_Place(parent, inner, tag), label)

    def _edit_values(self, path: TagPath, edit: Callable[[str], str]) -> None:
        for place in self.read_places(path):
            elem = place.parent[place.tag]
            if elem.VR in _BINARY:
                raise self.fail(f"{self.label(path, place)} has VR {elem.VR}, which holds no text")
            old_values = _values(elem)
            new_values = [edit(v) for v in old_values]
            if new_values == old_values:
                continue
            text = "\\".join(new_values)
            self.write(place, path, *self.convert(elem.VR, text, literal=False))

    def do_prepend(self, a: PrependAction) -> None:
        path = parse_path(a.tag)
        self.check_protected(path)
        prefix = self.render(a.value)
        self._edit_values(path, lambda v: prefix + v)

    def do_suffix(self, a: SuffixAction) -> None:
        path = parse_path(a.tag)
        self.check_protected(path)
        suffix = self.render(a.value)
        self._edit_values(path, lambda v: v + suffix)

    def do_regex_replace(self, a: RegexReplaceAction) -> None:
        path = parse_path(a.tag)
        self.check_protected(path)
        regex = compile_regex(a.pattern)
        try:
            self._edit_values(path, lambda v: regex.sub(a.replacement, v, a.count))
        except (IndexError, ValueError, TypeError) as exc:  # re2: a bad group reference
            if isinstance(exc, Unprocessable):
                raise
            raise self.fail(f"replacement {a.replacement!r}: {exc}") from None

    def _copy(self, a: CopyAction | MoveAction) -> _Place | None:
        """Copy the first located source element to every target place; return the
        source place (None: no source, or nothing to copy to)."""
        source_path, target_path = parse_path(a.from_), parse_path(a.to)
        self.check_protected(source_path)
        self.check_protected(target_path)
        sources = self.read_places(source_path)
        if not sources:
            return None
        src_place = sources[0]
        src = src_place.parent[src_place.tag]
        targets = self.write_places(target_path)
        copied = False
        for place in targets:
            if place.parent is src_place.parent and place.tag == src_place.tag:
                continue
            vr = self.vr_for(place, target_path, a.vr, fallback=src.VR)
            if src.VR in vr.split(" or "):
                vr, value = src.VR, copy.deepcopy(src.value)
            elif src.VR in _BINARY or vr in _BINARY:
                raise self.fail(f"cannot convert VR {src.VR} to VR {vr}")
            else:
                vr, value = self.convert(vr, _text(src), literal=False)
            self.write(place, target_path, vr, value)
            copied = True
        return src_place if copied else None

    def do_copy(self, a: CopyAction) -> None:
        self._copy(a)

    def do_move(self, a: MoveAction) -> None:
        """Copy, then delete the element copied from."""
        source = self._copy(a)
        if source is not None and source.tag in source.parent:
            self.remove(source, self.label(parse_path(a.from_), source))

    def _lookup_and_write(self, a: CrosswalkAction | AIStandardizeAction, answer: Callable[[str, str], str | None]) -> None:
        path = parse_path(a.tag)
        self.check_protected(path)
        to_path = parse_path(a.to) if a.to else None
        if to_path is not None:
            self.check_protected(to_path)
        places = self.read_places(path)
        if to_path is not None:
            places = places[:1]  # one value to write to the target
        for place in places:
            elem = place.parent[place.tag]
            if elem.VR in _BINARY:
                raise self.fail(f"{self.label(path, place)} has VR {elem.VR}, which holds no text")
            result = answer(_text(elem), self.label(path, place))
            if result is None:
                continue
            if to_path is None:
                self.write(place, path, *self.convert(elem.VR, result, literal=False))
                continue
            for target in self.write_places(to_path):
                vr = self.vr_for(target, to_path, None, fallback=elem.VR)
                self.write(target, to_path, *self.convert(vr, result, literal=False))

    def do_crosswalk(self, a: CrosswalkAction) -> None:
        tag_path = parse_path(a.tag)
        others = {}  # the other key elements' values, read once (their first value)
        for address in a.key_tags or ():
            path = parse_path(address)
            if path != tag_path:
                places = self.read_places(path)
                others[address] = _text(places[0].parent[places[0].tag]) if places else ""

        def answer(value: str, label: str) -> str | None:
            keys = tuple(value if parse_path(t) == tag_path else others[t] for t in a.key_tags) if a.key_tags else (value,)
            try:
                return self.services.crosswalk_value(self.index, a, keys, label)
            except KeyError:
                raise self.fail(f"unknown crosswalk table {a.table!r}") from None
            except (LookupFailed, Held) as exc:  # the same error, saying which action
                raise type(exc)(f"action {self.index} ({self.name} {self.where}): {exc}") from None

        self._lookup_and_write(a, answer)

    def do_ai_standardize(self, a: AIStandardizeAction) -> None:
        def answer(value: str, label: str) -> str | None:
            if not value.strip():
                return None
            return self.services.standardized_value(self.index, a, value)

        self._lookup_and_write(a, answer)



# The code of each action, by its ``action`` literal in :data:`shared.config.Action`.
ACTIONS: dict[str, Callable[[_Pass, Any], None]] = {
    "set": _Pass.do_set,
    "delete": _Pass.do_delete,
    "prepend": _Pass.do_prepend,
    "suffix": _Pass.do_suffix,
    "regex_replace": _Pass.do_regex_replace,
    "copy": _Pass.do_copy,
    "move": _Pass.do_move,
    "crosswalk": _Pass.do_crosswalk,
    "ai_standardize": _Pass.do_ai_standardize,
}
