"""Every action type over pydicom's test files, checked by ``dciodvfy`` (dicom3tools):
the morphed output may have no error the input did not already have. Each output also
carries an Original Attributes item, so its encoding (PS3.3 C.12.1.1.9) is checked too."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from shared.config import CrosswalkTable
from shared.dicom.io import read_instance, write_instance
from shared.dicom.original_attributes import OriginalAttributesPolicy
from shared.morph import apply_actions
from shared.morph_services import InMemoryCrosswalk, MorphServices

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"]

ACTIONS = {
    "set": [{"action": "set", "tag": "PatientID", "value": "AXF-{PatientID}"},
            {"action": "set", "tag": "InstitutionName", "value": "AXIOM HOSPITAL"}],
    "delete": [{"action": "delete", "tag": "InstitutionName"}, {"action": "delete", "group": "private"}],
    "prepend": [{"action": "prepend", "tag": "PatientID", "value": "P-"}],
    "suffix": [{"action": "suffix", "tag": "PatientID", "value": "-S"}],
    "regex_replace": [{"action": "regex_replace", "tag": "PatientID", "pattern": r"^(\w)(.*)$",
                       "replacement": r"\2\1"}],
    "copy": [{"action": "copy", "from": "PatientID", "to": "AccessionNumber"}],
    "move": [{"action": "move", "from": "InstitutionName", "to": "InstitutionalDepartmentName"}],
    "crosswalk": [{"action": "crosswalk", "tag": "PatientID", "table": "ids", "on_missing": "default",
                   "default": "UNMAPPED"}],
    "ai_standardize": [{"action": "ai_standardize", "tag": "InstitutionName",
                        "allowed": ["JFK Imaging Center", "Toshiba"]}],
}
SERVICES = MorphServices(crosswalk=InMemoryCrosswalk([CrosswalkTable(id="ids", entries={"1CT1": "CT-ONE"})]))
POLICY = OriginalAttributesPolicy("AXIOM FLOW", datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc))


def _dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.fail("dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools")
    return path


def report(path: Path) -> str:
    """dciodvfy's output for ``path`` (values it quotes in a character set other than
    UTF-8 are replaced, not fatal)."""
    proc = subprocess.run([_dciodvfy(), str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    out = proc.stdout + proc.stderr
    if "Abort" in out and not re.search(r"^(Error|Warning)|- (Error|Warning) -", out, re.M):
        pytest.fail(f"dciodvfy could not read {path.name}: {out.strip()[:500]}")
    return out


def _normalized(line: str) -> str:
    return " ".join(re.sub(r"\s=\s*<[^>]*>", " = <>", line).split())


def errors(path: Path) -> set[str]:
    """dciodvfy's Error lines, normalized so the same error on the same attribute
    compares equal: element values (`` = <...>``) are dropped, whitespace collapsed;
    attribute and module names (``Element=<...>``) are kept."""
    return {_normalized(line) for line in report(path).splitlines() if line.startswith("Error")}


def owner_warnings(path: Path) -> set[str]:
    """dciodvfy's warnings about private elements and their Private Creator (PS3.5
    7.8.1): "Private tag without owner", "Bad private owner value"."""
    return {_normalized(line) for line in report(path).splitlines()
            if "without owner" in line or "private owner" in line}


_INPUT_ERRORS: dict[str, set[str]] = {}


@pytest.mark.parametrize("name", list(ACTIONS))
def test_no_new_dciodvfy_errors(name, tmp_path):
    for filename in FILES:
        source = Path(get_testdata_file(filename))
        if filename not in _INPUT_ERRORS:
            _INPUT_ERRORS[filename] = errors(source)
        ds = read_instance(source)
        pixels = ds.get("PixelData")
        changes = apply_actions(ds, ACTIONS[name], SERVICES, original_attributes=POLICY)
        out = tmp_path / f"{name}-{filename}"
        write_instance(ds, out)
        assert read_instance(out).get("PixelData") == pixels
        new = errors(out) - _INPUT_ERRORS[filename]
        assert not new, f"{name} on {filename} ({len(changes)} changes) added dciodvfy errors: {sorted(new)}"


def test_the_check_sees_a_new_error(tmp_path):
    """Negative control: an incomplete new sequence item is a new Type 1 error."""
    source = Path(get_testdata_file("MR_small.dcm"))
    ds = read_instance(source)
    apply_actions(ds, [{"action": "set", "tag": "ReferencedStudySequence[0].ReferencedSOPInstanceUID",
                        "value": "1.2.3"}])
    write_instance(ds, tmp_path / "bad.dcm")
    assert any("ReferencedSOPClassUID" in line for line in errors(tmp_path / "bad.dcm") - errors(source))


# actions on private elements, and the (group, creator) their record must carry
PRIVATE_ACTIONS = {
    "delete private group": ([{"action": "delete", "group": "private"}], (0x0009, "GEMS_IDEN_01")),
    "delete one private element": ([{"action": "delete", "tag": '(0009,"GEMS_IDEN_01",01)'}],
                                   (0x0009, "GEMS_IDEN_01")),
    "set an existing private element": ([{"action": "set", "tag": '(0009,"GEMS_IDEN_01",01)', "value": "X"}],
                                        (0x0009, "GEMS_IDEN_01")),
    "set in a new private block": ([{"action": "set", "tag": '(0033,"AXIOM FLOW",01)', "value": "X", "vr": "LO"}],
                                   (0x0033, "AXIOM FLOW")),
}


@pytest.mark.parametrize("name", list(PRIVATE_ACTIONS))
def test_recorded_private_elements_keep_their_owner(name, tmp_path):
    """Item 7: a private element recorded in the Modified Attributes Sequence comes with
    its Private Creator (PS3.5 7.8.1), so dciodvfy finds no private tag without owner."""
    actions, (group, creator) = PRIVATE_ACTIONS[name]
    source = Path(get_testdata_file("CT_small.dcm"))
    ds = read_instance(source)
    apply_actions(ds, actions, original_attributes=POLICY)
    out = tmp_path / "out.dcm"
    write_instance(ds, out)
    assert not owner_warnings(out) - owner_warnings(source), sorted(owner_warnings(out))
    [modified] = read_instance(out).OriginalAttributesSequence[0].ModifiedAttributesSequence
    assert 0x01 in modified.private_block(group, creator)  # the original, found by its owner
    assert not errors(out) - errors(source)


# --- modules brought in by an action (PS3.3 module tables) ----------------------------------

REPO = Path(__file__).resolve().parents[2]


def _pydicom_test_files() -> list[Path]:
    """pydicom's test files an instance can arrive as (complete, with SOP UIDs): the
    ones it ships (``get_testdata_files`` would also try to download more)."""
    import pydicom.data

    from shared.errors import Unprocessable
    found = []
    for name in sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm")):
        try:
            read_instance(Path(name))
        except Unprocessable:
            continue
        found.append(Path(name))
    return found


def test_the_shipped_example_adds_no_dciodvfy_error_to_any_pydicom_test_file(tmp_path):
    """Item 8: the actions examples/local.yaml decides for each of pydicom's test files
    (Institution Name on everything), recorded in Original Attributes, leave no error
    dciodvfy did not already report for the input. Institution Name brings General
    Equipment into a Secondary Capture image that lacked it, so its Type 2 Manufacturer
    is added empty; without that, dciodvfy reports it missing on 28 of these files."""
    from shared.config import load_yaml
    from shared.messages import IngestMetadata
    from shared.rules import decide

    config = load_yaml(REPO / "examples" / "local.yaml")
    files = _pydicom_test_files()
    assert len(files) > 50
    brought_in = 0
    for source in files:
        ds = read_instance(source)
        had_equipment = "Manufacturer" in ds or "InstitutionName" in ds
        decision = decide(config, ds, IngestMetadata(source_type="cstore", calling_ae="MODALITY"))
        assert decision.actions, source.name
        apply_actions(ds, decision.actions, original_attributes=POLICY)
        out = tmp_path / source.name
        write_instance(ds, out)
        new = errors(out) - errors(source)
        assert not new, f"{source.name}: {sorted(new)}"
        brought_in += not had_equipment
    assert brought_in >= 20  # the case the check is about was exercised


MODULE_ACTIONS = {
    "General Equipment": ([{"action": "set", "tag": "InstitutionName", "value": "AXIOM HOSPITAL"}],
                          ["Manufacturer"]),
    "Clinical Trial Subject": ([{"action": "set", "tag": "ClinicalTrialSponsorName", "value": "ACME"},
                                {"action": "set", "tag": "ClinicalTrialProtocolID", "value": "P-1"},
                                {"action": "set", "tag": "ClinicalTrialSubjectID", "value": "S-{PatientID}"}],
                               ["ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName"]),
    "Clinical Trial Study": ([{"action": "set", "tag": "ClinicalTrialTimePointDescription", "value": "BASELINE"}],
                             ["ClinicalTrialTimePointID"]),
    "Clinical Trial Series": ([{"action": "set", "tag": "ClinicalTrialSeriesID", "value": "SERIES-1"}],
                              ["ClinicalTrialCoordinatingCenterName"]),
}


@pytest.mark.parametrize("module", list(MODULE_ACTIONS))
def test_a_module_brought_in_gets_its_type2_attributes_empty(module, tmp_path):
    """Each module of the shipped table, on a Secondary Capture image that has none of
    them: the morph adds the module's Type 2 attributes empty and dciodvfy finds no new
    error; the same values set by pydicom alone leave dciodvfy naming those Type 2
    attributes (the table says what dciodvfy requires)."""
    actions, type2 = MODULE_ACTIONS[module]
    source = Path(get_testdata_file("SC_rgb_small_odd.dcm"))
    ds = read_instance(source)
    assert not any(keyword in ds for keyword in type2)
    changes = apply_actions(ds, actions, original_attributes=POLICY)
    assert [(c.path, c.old, c.new) for c in changes if c.path in type2] == [(k, None, "") for k in type2]
    assert all(ds[keyword].is_empty for keyword in type2)
    out = tmp_path / "out.dcm"
    write_instance(ds, out)
    assert not errors(out) - errors(source)

    bare = read_instance(source)  # negative control: the values without the module's Type 2
    for action in actions:
        setattr(bare, action["tag"], action["value"].replace("{PatientID}", "X"))
    write_instance(bare, tmp_path / "bare.dcm")
    missing = {line for line in errors(tmp_path / "bare.dcm") - errors(source) if "Type 2" in line}
    assert {re.search(r"Element=<(\w+)>", line).group(1) for line in missing} == set(type2)


def test_a_module_already_there_is_left_as_it_is():
    """CT_small has General Equipment (Institution Name, Station Name...): with its
    Manufacturer removed, setting Device Serial Number adds nothing, as the module was
    there before the pass (its missing Type 2 is the input's own error)."""
    ds = read_instance(Path(get_testdata_file("CT_small.dcm")))
    del ds.Manufacturer
    changes = apply_actions(ds, [{"action": "set", "tag": "DeviceSerialNumber", "value": "123"}])
    assert [c.path for c in changes] == ["DeviceSerialNumber"] and "Manufacturer" not in ds
