"""Tag morphing: apply a plan's actions to a dataset in place. Pixel data is never
read or decoded; actions that would touch it are refused by config validation."""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from shared.config import DeleteAction, SetAction
from shared.dicom.tags import describe, dictionary_vr, parse_tag
from shared.errors import Unprocessable
from pydantic import TypeAdapter

from shared.config import Action

_ACTIONS = TypeAdapter(list[Action])


def apply_actions(ds: Dataset, actions: list[dict]) -> list[str]:
    """Apply ``actions`` in order; return a short description of each change."""
    changes = []
    for index, action in enumerate(_ACTIONS.validate_python(actions)):
        tag = parse_tag(action.tag)
        if isinstance(action, SetAction):
            vr = action.vr or (ds[tag].VR if tag in ds else dictionary_vr(tag))
            if vr is None:
                raise Unprocessable(f"action {index} (set {describe(tag)}): no VR known, give one")
            ds[tag] = DataElement(tag, vr, action.value)
            changes.append(f"set {describe(tag)}")
        elif isinstance(action, DeleteAction):
            if tag in ds:
                del ds[tag]
                changes.append(f"delete {describe(tag)}")
    return changes
