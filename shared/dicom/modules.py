"""Modules a morph can bring into an instance, and their Type 2 attributes (PS3.3).

A Type 2 attribute must be present when its module is, with a value or empty (PS3.5
section 7.4.2). An action that sets an attribute of a module the instance did not have
(Institution Name on a Secondary Capture image without General Equipment) brings the
module in, and with it that obligation: :func:`missing_type2` says which attributes the
morph then adds empty, so the output is no less valid than the input.

The table lists the modules whose attributes routing rules set, with every top-level
attribute of each (any type: any of them present means the module is) and its
unconditional Type 2 attributes, from the module tables of PS3.3:

- General Equipment, C.7.5.1 (Table C.7-8): Type 2 Manufacturer;
- Clinical Trial Subject, C.7.1.3 (Table C.7-2b): Type 2 Clinical Trial Protocol Name,
  Site ID, Site Name (its Type 1 Sponsor Name and Protocol ID have no empty form: rules
  that bring the module in must set them);
- Clinical Trial Study, C.7.2.3 (Table C.7-4b): Type 2 Clinical Trial Time Point ID;
- Clinical Trial Series, C.7.3.2 (Table C.7-5b): Type 2 Clinical Trial Coordinating
  Center Name.

Modules every IOD that has them makes mandatory (Patient, General Study, General Series,
SOP Common...) are not listed: an instance has them already, and their Type 2
attributes are its sender's business.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

__all__ = ["Module", "MODULES", "modules_of", "missing_type2"]


@dataclass(frozen=True)
class Module:
    name: str
    section: str  # PS3.3
    attributes: frozenset[BaseTag]  # every top-level attribute of the module
    type2: tuple[BaseTag, ...]  # its unconditional Type 2 attributes


def _module(name: str, section: str, type2: list[str], others: list[str]) -> Module:
    tags = [Tag(tag_for_keyword(keyword)) for keyword in type2 + others]
    return Module(name, section, frozenset(tags), tuple(tags[:len(type2)]))


MODULES: tuple[Module, ...] = (
    _module("General Equipment", "C.7.5.1", ["Manufacturer"], [
        "InstitutionName", "InstitutionAddress", "StationName", "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence", "ManufacturerModelName", "ManufacturerDeviceClassUID",
        "DeviceSerialNumber", "DeviceUID", "GantryID", "UDISequence", "SoftwareVersions",
        "SpatialResolution", "DateOfManufacture", "DateOfInstallation", "DateOfLastCalibration",
        "TimeOfLastCalibration", "PixelPaddingValue"]),
    _module("Clinical Trial Subject", "C.7.1.3",
            ["ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName"], [
                "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "IssuerOfClinicalTrialProtocolID",
                "OtherClinicalTrialProtocolIDsSequence", "IssuerOfClinicalTrialSiteID", "ClinicalTrialSubjectID",
                "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
                "IssuerOfClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
                "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"]),
    _module("Clinical Trial Study", "C.7.2.3", ["ClinicalTrialTimePointID"], [
        "IssuerOfClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
        "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
        "ClinicalTrialTimePointTypeCodeSequence", "ConsentForClinicalTrialUseSequence"]),
    _module("Clinical Trial Series", "C.7.3.2", ["ClinicalTrialCoordinatingCenterName"], [
        "IssuerOfClinicalTrialSeriesID", "ClinicalTrialSeriesID", "ClinicalTrialSeriesDescription"]),
)

_BY_TAG: dict[BaseTag, list[Module]] = {}
for _m in MODULES:
    for _tag in _m.attributes:
        _BY_TAG.setdefault(_tag, []).append(_m)


def modules_of(tag: int) -> list[Module]:
    """The listed modules ``tag`` is a top-level attribute of."""
    return _BY_TAG.get(Tag(tag), [])


def missing_type2(ds: Dataset, inserted: Collection[int]) -> list[tuple[Module, BaseTag]]:
    """The Type 2 attributes to add empty to ``ds`` for every listed module an insertion
    brought in: a module some of whose attributes were ``inserted`` (top-level tags a
    pass added, absent before) and all of whose other attributes are absent, i.e. the
    instance did not have it before."""
    inserted = {Tag(t) for t in inserted}
    found: list[tuple[Module, BaseTag]] = []
    for module in {m for tag in inserted for m in modules_of(tag)}:
        present = {tag for tag in module.attributes if tag in ds}
        if not present or not present <= inserted:
            continue  # not there, or there before the pass
        found.extend((module, tag) for tag in module.type2 if tag not in ds)
    return sorted(found, key=lambda pair: pair[1])
